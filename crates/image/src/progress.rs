//! Step lines with elapsed time. Plain text unless writing to a terminal.

use std::fmt::Display;
use std::time::Instant;

/// Prints one line per pipeline step, prefixed with the elapsed time.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    color: bool,
    quiet: bool,
}

impl Progress {
    /// `color`: bold step markers (the caller decides: a TTY and not `CI=true`).
    pub fn new(color: bool) -> Self {
        Self {
            start: Instant::now(),
            color,
            quiet: false,
        }
    }

    /// A reporter that prints nothing (tests).
    pub fn quiet() -> Self {
        Self {
            start: Instant::now(),
            color: false,
            quiet: true,
        }
    }

    /// Seconds since the reporter was created.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints `[  12.3s] ==> message`.
    pub fn step(&self, message: impl Display) {
        if self.quiet {
            return;
        }
        let t = self.elapsed_secs();
        if self.color {
            println!("\x1b[2m[{t:>6.1}s]\x1b[0m \x1b[1m==>\x1b[0m {message}");
        } else {
            println!("[{t:>6.1}s] ==> {message}");
        }
    }
}

/// `1234567` -> `1.2 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
    }
}
