//! A text-log line written without `tracing`'s event machinery, for the one line every
//! request writes (the access log). Through `tracing::info!` that line cost ~5,950
//! instructions (issue 19): the dispatch and the filter, a `ValueSet` visited field by field
//! through `dyn Visit`, the subscriber's own buffer. Here the caller writes its fields
//! straight into a per-thread buffer, after the same `time level target: ` prefix, and the
//! line goes to the log's writer in one call: the bytes `TextFormat` with `TextFields`
//! writes for that event outside any span. The binary installs the writer
//! (`install_text_sink`) only when its log is text without colours; otherwise (the JSON
//! format, colours, the tests' own subscribers) `write` declines and the caller logs
//! through `tracing`. Whether to write at all stays the caller's: it asks the live filter
//! (`tracing::enabled!`), as the access log does once per request.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::logfields::{self, push_debug_str};
use super::logline;
use super::logtime::LogTime;
use super::logwriter::LogWriter;

static SINK: OnceLock<LogWriter> = OnceLock::new();

thread_local! {
    /// The line's buffer, kept by each thread between lines.
    static LINE: Cell<String> = const { Cell::new(String::new()) };
}

/// A buffer this large is not kept for the next line.
const LINE_KEPT: usize = 16 * 1024;

/// Let `write` write lines to `writer`: the binary's text log (no colours), the writer its
/// `tracing` subscriber writes to, so the lines of both stay in order. Once per process.
pub fn install_text_sink(writer: LogWriter) {
    let _ = SINK.set(writer);
}

/// Write one line at `level` for `target` with the fields `fields` adds, when a sink is
/// installed; `false`: none is, nothing was written (log it through `tracing`). The caller
/// has asked the filter; this writes what it is given.
pub(crate) fn write(level: &Level, target: &str, fields: impl FnOnce(&mut TextLine)) -> bool {
    let Some(sink) = SINK.get() else {
        return false;
    };
    let buf = LINE.try_with(Cell::take).unwrap_or_default();
    let mut line = TextLine::start(buf, level, target);
    fields(&mut line);
    let buf = line.finish();
    sink.write_lines(buf.as_bytes());
    if buf.capacity() <= LINE_KEPT {
        let _ = LINE.try_with(|l| l.set(buf));
    }
    true
}

/// A field's key as `TextLine` takes it, ` name=`, put together at compile time: one copy
/// per field instead of a separator, the name and `=` one by one (issue 19).
macro_rules! key {
    ($name:literal) => {
        concat!(" ", $name, "=")
    };
}
pub(crate) use key;

/// One line being written: `TextFormat`'s prefix, then fields as `TextFields` writes them.
/// Keys come from `key!`; names must be plain identifiers (not `message`, no `r#`), as
/// `tracing` field names are.
pub(crate) struct TextLine {
    buf: String,
    is_empty: bool,
}

impl TextLine {
    /// `time level target:` into `buf` (cleared first); each field brings its own space.
    pub(crate) fn start(mut buf: String, level: &Level, target: &str) -> Self {
        buf.clear();
        if LogTime.format_time(&mut Writer::new(&mut buf)).is_err() {
            buf.push_str("<unknown time>");
        }
        buf.push_str(logline::level(level));
        buf.push_str(target);
        buf.push(':');
        TextLine {
            buf,
            is_empty: true,
        }
    }

    fn name(&mut self, key: &str) {
        debug_assert!(
            key.starts_with(' ')
                && key.ends_with('=')
                && key != " message="
                && !key.starts_with(" r#"),
            "{key}"
        );
        self.is_empty = false;
        self.buf.push_str(key);
    }

    /// A `str` field (`{:?}`, in quotes).
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.name(key);
        push_debug_str(&mut self.buf, value);
    }

    /// A `str` field that `{:?}` prints as it is, by construction (a literal, a method, a
    /// request id `pipeline::headers::request_id` settled): the same text as `str`,
    /// without looking at each byte first.
    pub(crate) fn plain(&mut self, key: &str, value: &str) {
        debug_assert!(logfields::debug_is_verbatim(value), "{value:?}");
        self.name(key);
        logfields::push_quoted(&mut self.buf, value);
    }

    /// An integer field.
    pub(crate) fn u64(&mut self, key: &str, value: u64) {
        self.name(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    /// A `%value` field (`tracing::field::display`).
    pub(crate) fn display(&mut self, key: &str, value: impl fmt::Display) {
        self.name(key);
        // Writing to a `String` cannot fail.
        let _ = write!(self.buf, "{value}");
    }

    /// A field whose value `value` writes, as its `Display` would (no quotes).
    pub(crate) fn with(&mut self, key: &str, value: impl FnOnce(&mut String)) {
        self.name(key);
        value(&mut self.buf);
    }

    /// The whole line, with its `\n` (and the prefix's space when no field was written).
    pub(crate) fn finish(mut self) -> String {
        if self.is_empty {
            self.buf.push(' ');
        }
        self.buf.push('\n');
        self.buf
    }
}
