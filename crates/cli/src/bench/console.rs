//! The guest's own boot time, read from its serial console log.
//!
//! The guest agent prints a line containing `locale2b-agent: ready` once it
//! listens. Kernel lines carry printk timestamps (`[    1.234567] ...`,
//! seconds since the kernel started). If the ready line itself has a
//! timestamp, that is the boot time; otherwise (the agent writes it from
//! user space, without one) the timestamp of the last kernel line before it
//! is used, which is a lower bound: the agent became ready at or after that
//! instant. Without a ready line or any timestamp before it there is no
//! figure, and the caller reports "n/a".

use serde::Serialize;

/// The marker the agent prints when it is ready.
pub const READY_MARKER: &str = "locale2b-agent: ready";

/// How a guest boot time was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootTimeSource {
    /// The ready line carried a printk timestamp.
    ReadyLine,
    /// Timestamp of the last kernel line before the (untimestamped) ready line.
    LastKernelLine,
}

/// Guest kernel time at which the agent was ready.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GuestBoot {
    /// Milliseconds of guest kernel time.
    pub ms: f64,
    /// Where the figure comes from.
    pub source: BootTimeSource,
}

/// Finds the guest's boot time in a console log (see the module doc).
pub fn guest_boot_time(log: &str) -> Option<GuestBoot> {
    let mut last_stamp: Option<f64> = None;
    for line in log.lines() {
        let stamp = printk_seconds(line);
        if line.contains(READY_MARKER) {
            return match stamp {
                Some(s) => Some(GuestBoot {
                    ms: s * 1000.0,
                    source: BootTimeSource::ReadyLine,
                }),
                None => last_stamp.map(|s| GuestBoot {
                    ms: s * 1000.0,
                    source: BootTimeSource::LastKernelLine,
                }),
            };
        }
        if stamp.is_some() {
            last_stamp = stamp;
        }
    }
    None
}

/// Seconds of a printk timestamp at the start of `line` (`[   12.345678]`),
/// ignoring leading whitespace and carriage returns.
fn printk_seconds(line: &str) -> Option<f64> {
    let rest = line
        .trim_start_matches(['\r', ' ', '\t'])
        .strip_prefix('[')?;
    let (inside, _) = rest.split_once(']')?;
    let num = inside.trim();
    let (secs, frac) = num.split_once('.')?;
    if secs.is_empty()
        || frac.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_printk_stamps() {
        assert_eq!(printk_seconds("[    1.234567] foo"), Some(1.234567));
        assert_eq!(printk_seconds("\r[   12.000001] x"), Some(12.000001));
        assert_eq!(printk_seconds("[0.5]"), Some(0.5));
        assert_eq!(printk_seconds("no stamp"), None);
        assert_eq!(printk_seconds("[  abc.def] x"), None);
        assert_eq!(printk_seconds("[   12] x"), None);
        assert_eq!(printk_seconds("[mem 0x0-0x1] usable"), None);
        assert_eq!(printk_seconds("x [    1.0] late"), None);
    }

    #[test]
    fn uses_last_kernel_line_before_untimestamped_ready() {
        let log = "[    0.000000] Linux version 6.1\n\
                   [    0.812345] Run /usr/local/bin/locale2b-agent as init process\n\
                   some agent log line\n\
                   locale2b-agent: ready\n\
                   [    9.000000] later kernel line\n";
        let b = guest_boot_time(log).unwrap();
        assert_eq!(b.source, BootTimeSource::LastKernelLine);
        assert!((b.ms - 812.345).abs() < 1e-6, "{}", b.ms);
    }

    #[test]
    fn prefers_a_stamp_on_the_ready_line() {
        let log = "[    0.100000] a\n[    1.500000] locale2b-agent: ready\n";
        let b = guest_boot_time(log).unwrap();
        assert_eq!(b.source, BootTimeSource::ReadyLine);
        assert!((b.ms - 1500.0).abs() < 1e-6);
    }

    #[test]
    fn first_ready_line_wins() {
        let log = "[    0.2] a\nlocale2b-agent: ready\n[    5.0] b\nlocale2b-agent: ready\n";
        assert!((guest_boot_time(log).unwrap().ms - 200.0).abs() < 1e-6);
    }

    #[test]
    fn no_figure_without_marker_or_stamp() {
        assert_eq!(guest_boot_time(""), None);
        assert_eq!(guest_boot_time("[    1.0] kernel only\n"), None);
        assert_eq!(guest_boot_time("locale2b-agent: ready\n"), None);
        assert_eq!(guest_boot_time("hello\nlocale2b-agent: ready\n"), None);
    }
}
