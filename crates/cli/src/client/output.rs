//! How the client prints: aligned tables for people, JSON for programs,
//! progress on a terminal only.

use serde_json::Value;
use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;

/// Prints `rows` under `headers`, columns aligned, on stdout.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    println!(
        "{}",
        line(headers.iter().map(|h| (*h).to_owned()).collect())
    );
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

/// Pretty JSON on stdout.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A JSON value as a table cell (`-` for null).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `n` bytes for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Progress of a copy: a redrawn line on a terminal (stderr), nothing
/// otherwise but the final line.
pub struct Progress {
    what: String,
    total: Option<u64>,
    done: u64,
    tty: bool,
    started: Instant,
    last_draw: Instant,
}

impl Progress {
    /// Progress of `what`, `total` bytes when known.
    pub fn new(what: impl Into<String>, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            what: what.into(),
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: now,
            last_draw: now,
        }
    }

    /// `n` more bytes went.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.tty && self.last_draw.elapsed().as_millis() >= 100 {
            self.last_draw = Instant::now();
            let pct = self
                .total
                .filter(|t| *t > 0)
                .map(|t| format!(" {:>3}%", self.done * 100 / t))
                .unwrap_or_default();
            let _ = write!(
                std::io::stderr(),
                "\r{}:{pct} {}   ",
                self.what,
                bytes(self.done)
            );
        }
    }

    /// [`Self::finish`] after `n` bytes went at once.
    pub fn finish_with(mut self, n: u64) {
        self.done = n;
        self.finish();
    }

    /// The last line: what went, how fast.
    pub fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes((self.done as f64 / secs) as u64);
        let clear = if self.tty { "\r" } else { "" };
        eprintln!(
            "{clear}{}: {} in {secs:.1} s ({rate}/s)   ",
            self.what,
            bytes(self.done)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cells() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!("x")), "x");
        assert_eq!(cell(&serde_json::json!(3)), "3");
    }
}
