//! The log's timestamp: tracing-subscriber's `SystemTime` text (RFC 3339, UTC, in
//! microseconds), byte for byte, with the date and time of day formatted once a second
//! per thread. The stock timer converts the seconds to a calendar date and formats seven
//! numbers on every line: about 2,400 instructions per access-log line (issue 19). Within
//! one second only the six sub-second digits change, so each thread keeps the last line's
//! text and rewrites those digits. The text for a new second is the stock timer's own
//! output, kept only when the clock read before and after it fell in the same second; this
//! module does no calendar arithmetic of its own.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// `fmt().with_timer(LogTime)`: what `SystemTime` writes, formatted once a second per
/// thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogTime;

/// A thread's last timestamp: `text` is `…THH:MM:SS.uuuuuuZ` for a time in second `secs`
/// since the epoch; everything before its last 8 bytes (`.uuuuuuZ`) holds for that whole
/// second.
struct Stamp {
    secs: u64,
    text: String,
}

/// The bytes after the seconds: `.`, six digits, `Z`.
const SUBSECOND: usize = 8;

thread_local! {
    static STAMP: RefCell<Option<Stamp>> = const { RefCell::new(None) };
}

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        // Before the epoch (a clock set wrong): the stock timer, which handles it.
        let Ok(now) = std::time::SystemTime::now().duration_since(UNIX_EPOCH) else {
            return SystemTime.format_time(w);
        };
        let reused = STAMP
            .try_with(|s| {
                // A line formatted while formatting a line (a field's Debug that logs)
                // finds the cell borrowed and takes the slow way.
                let mut s = s.try_borrow_mut().ok()?;
                let stamp = s.as_mut().filter(|s| s.secs == now.as_secs())?;
                set_micros(&mut stamp.text, now.subsec_micros());
                Some(w.write_str(&stamp.text))
            })
            .ok()
            .flatten();
        match reused {
            Some(r) => r,
            None => first_in_second(w),
        }
    }
}

/// The first line of a second on this thread: the stock timer's text, written and, if
/// the clock stayed in one second around it, kept for the rest of that second.
fn first_in_second(w: &mut Writer<'_>) -> fmt::Result {
    let before = since_epoch();
    let mut text = String::with_capacity(32);
    SystemTime.format_time(&mut Writer::new(&mut text))?;
    let after = since_epoch();
    if let (Some(b), Some(a)) = (before, after) {
        if b.as_secs() == a.as_secs() && is_stamp(&text) {
            let _ = STAMP.try_with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    *s = Some(Stamp {
                        secs: b.as_secs(),
                        text: text.clone(),
                    });
                }
            });
        }
    }
    w.write_str(&text)
}

fn since_epoch() -> Option<Duration> {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

/// The stock timer's shape, which `set_micros` relies on: `….uuuuuuZ`.
fn is_stamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > SUBSECOND
        && b[b.len() - SUBSECOND] == b'.'
        && b[b.len() - 1] == b'Z'
        && b[b.len() - SUBSECOND + 1..b.len() - 1]
            .iter()
            .all(u8::is_ascii_digit)
}

/// Replace the six sub-second digits of a stamp (`format!("{:06}", micros)`).
fn set_micros(text: &mut String, micros: u32) {
    text.truncate(text.len() - (SUBSECOND - 1));
    let mut div = 100_000;
    while div > 0 {
        text.push(char::from(b'0' + (micros / div % 10) as u8));
        div /= 10;
    }
    text.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock() -> String {
        let mut s = String::new();
        SystemTime.format_time(&mut Writer::new(&mut s)).unwrap();
        s
    }

    fn ours() -> String {
        let mut s = String::new();
        LogTime.format_time(&mut Writer::new(&mut s)).unwrap();
        s
    }

    #[test]
    fn micros_as_the_stock_timer_writes_them() {
        for micros in [0, 7, 10, 999, 123_456, 999_999] {
            let mut text = "2026-12-03T23:06:21.000000Z".to_string();
            set_micros(&mut text, micros);
            assert_eq!(text, format!("2026-12-03T23:06:21.{micros:06}Z"));
        }
    }

    #[test]
    fn writes_what_system_time_writes() {
        // The clock moves between the two calls: compare everything but the sub-second
        // digits, and only when both fell in the same second.
        let mut compared = 0;
        for _ in 0..20_000 {
            let (a, b, c) = (stock(), ours(), stock());
            assert!(is_stamp(&b), "{b}");
            assert_eq!(a.len(), b.len(), "{a} {b}");
            let cut = a.len() - SUBSECOND;
            if a[..cut] == c[..cut] {
                assert_eq!(b[..cut], a[..cut]);
                assert!(a <= b && b <= c, "{a} {b} {c}");
                compared += 1;
            }
        }
        assert!(compared > 0);
    }
}
