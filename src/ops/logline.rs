//! The text log's line: tracing-subscriber's default (`Full`) format, byte for byte, with
//! a shorter way for the common line. `Full` writes the level and the target through
//! `core::fmt` and ANSI `Style`s (colours off too): about 1,000 instructions per access-log
//! line (issue 19). Without colours and outside any span, a line is only
//! `time level target: fields`, and this writes those as plain strings; anything else
//! (colours on, a span in scope) is `Full`'s.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::logtime::LogTime;

/// `fmt().event_format(TextFormat::default())`: what `Format<Full, LogTime>` (the
/// default format with `LogTime`) writes.
#[derive(Debug, Clone)]
pub struct TextFormat {
    full: Format<Full, LogTime>,
}

impl Default for TextFormat {
    fn default() -> Self {
        TextFormat {
            full: Format::default().with_timer(LogTime),
        }
    }
}

/// The space after the time, the level as `Full` pads it, and the space after it.
pub(crate) fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.full.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        if LogTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level(meta.level()))?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;
    use crate::ops::logfields::tests::Buf;
    use crate::ops::logfields::TextFields;

    fn events() {
        tracing::trace!(n = 1u64, "trace");
        tracing::debug!(n = 2u64, "debug");
        tracing::info!(target: "jwtgate::access", front = "proxy", status = 200u64);
        tracing::warn!(n = 4u64, "a message with \"quotes\"");
        tracing::error!(error = %"gone", "failed");
        tracing::info!(target: "jwtgate::access", "");
        let span = tracing::info_span!("conn", peer = "127.0.0.1:1", n = 7u64);
        let _e = span.enter();
        tracing::info!(done = false);
        let inner = tracing::info_span!("inner");
        let _i = inner.enter();
        tracing::info!(target: "jwtgate::access", status = 200u64);
    }

    /// The lines with their timestamps (`YYYY-MM-DDTHH:MM:SS.uuuuuuZ`) masked: the two
    /// subscribers read the clock at different moments (`logtime`'s tests compare the
    /// timestamps).
    fn render<E, F>(event: E, fields: F, ansi: bool) -> Vec<String>
    where
        E: FormatEvent<tracing_subscriber::Registry, F> + Send + Sync + 'static,
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(ansi)
            .with_max_level(Level::TRACE)
            .fmt_fields(fields)
            .event_format(event)
            .finish();
        tracing::subscriber::with_default(sub, events);
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        out.split_inclusive('\n')
            .map(|l| {
                let z = l.find('Z').expect("a timestamp");
                assert_eq!(&l[z - 7..z - 6], ".", "{l}");
                format!("{}<time>{}", &l[..z - 26], &l[z + 1..])
            })
            .collect()
    }

    #[test]
    fn writes_what_the_full_format_writes() {
        for ansi in [false, true] {
            let want = render(
                Format::default().with_timer(tracing_subscriber::fmt::time::SystemTime),
                DefaultFields::new(),
                ansi,
            );
            assert_eq!(want.len(), 8, "{want:?}");
            let got = render(TextFormat::default(), TextFields, ansi);
            assert_eq!(got, want, "ansi {ansi}");
        }
    }
}
