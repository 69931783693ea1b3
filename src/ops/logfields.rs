//! The text log's field formatter: tracing-subscriber's `DefaultFields` output, byte for
//! byte, without its cost on the common fields. With the access log on, `DefaultFields`
//! spent about 12,000 instructions a request on eleven fields (issue 19): every `str`
//! went through `{:?}`, char by char, and every name through an ANSI `Style` even with
//! colours off. Here a string that `{:?}` would print as-is is written between quotes,
//! integers (`itoa`) and booleans directly, debug and display values with their `{:?}`,
//! and names plainly when colours are off, all into a per-thread buffer that reaches the
//! line in one write; anything else (messages, `r#` names, errors, colours on) is
//! `DefaultFields`'s.

use std::cell::Cell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// `fmt().fmt_fields(TextFields)`: the text format's fields, as `DefaultFields` writes
/// them.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

thread_local! {
    /// The fast path's buffer, kept by each thread between lines (see `TextVisitor::buf`).
    static SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// A buffer this large is not kept for the next line.
const SCRATCH_KEPT: usize = 16 * 1024;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> TextVisitor<'a> {
        TextVisitor {
            writer: target,
            buf: SCRATCH.try_with(Cell::take).unwrap_or_default(),
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// `TextFields`'s visitor.
pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    /// The fast path's output, not yet in `writer`: the line's fields reach the writer in
    /// one call (each call goes through two `dyn Write` layers) when they are all plain.
    /// Flushed before `DefaultVisitor` or anyone else writes.
    buf: String,
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// `name=` with the separating space before it, into `buf`, when this field can take
    /// the fast path: a plain name and no colours. `false`: leave it to `DefaultVisitor`.
    fn plain_name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err()
            || self.writer.has_ansi_escapes()
            || name == "message"
            || name.starts_with("r#")
        {
            return false;
        }
        if !std::mem::take(&mut self.is_empty) {
            self.buf.push(' ');
        }
        self.buf.push_str(name);
        self.buf.push('=');
        true
    }

    /// `fast` writes the value into `buf` after `plain_name`; otherwise `slow` has
    /// `DefaultVisitor` write the whole field.
    fn either(
        &mut self,
        field: &Field,
        fast: impl FnOnce(&mut String),
        slow: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        if self.plain_name(field) {
            fast(&mut self.buf);
        } else {
            let mut d = self.default();
            slow(&mut d);
            self.result = d.finish();
        }
    }

    /// `buf` into the writer.
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.result = self.result.and_then(|()| self.writer.write_str(&self.buf));
            self.buf.clear();
        }
    }

    fn default(&mut self) -> DefaultVisitor<'_> {
        self.flush();
        let empty = std::mem::take(&mut self.is_empty);
        DefaultVisitor::new(self.writer.by_ref(), empty)
    }
}

impl Drop for TextVisitor<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() <= SCRATCH_KEPT {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let _ = SCRATCH.try_with(|s| s.set(buf));
        }
    }
}

/// A `str` field's value as `DefaultFields` writes it, `{:?}`: between quotes as is when
/// that is what `{:?}` would print (also `textline`'s).
pub(crate) fn push_debug_str(b: &mut String, value: &str) {
    if debug_is_verbatim(value) {
        push_quoted(b, value);
    } else {
        // Writing to a `String` cannot fail.
        let _ = write!(b, "{value:?}");
    }
}

/// `value` between double quotes, as it is: `{:?}` of a `debug_is_verbatim` string.
pub(crate) fn push_quoted(b: &mut String, value: &str) {
    b.reserve(value.len() + 2);
    b.push('"');
    b.push_str(value);
    b.push('"');
}

/// `{:?}` of these strings is the string between quotes: printable ASCII without `"` or
/// `\`. Every byte is looked at (no early exit), which lets the compiler test 16 at a
/// time: most values are plain, and a request id or user agent is 40 bytes or more.
pub(crate) fn debug_is_verbatim(s: &str) -> bool {
    s.bytes().fold(true, |plain, b| {
        plain & ((0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\'))
    })
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.either(
            field,
            |b| push_debug_str(b, value),
            |d| d.record_str(field, value),
        );
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.either(
            field,
            |b| b.push_str(itoa::Buffer::new().format(value)),
            |d| d.record_u64(field, value),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.either(
            field,
            |b| b.push_str(itoa::Buffer::new().format(value)),
            |d| d.record_i64(field, value),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let s = if value { "true" } else { "false" };
        self.either(field, |b| b.push_str(s), |d| d.record_bool(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut d = self.default();
        d.record_error(field, value);
        self.result = d.finish();
    }

    /// `name=` then the value's `{:?}`, as `DefaultVisitor` writes a plain name without
    /// colours (`%display` values arrive here too).
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.either(
            field,
            |b| {
                let _ = write!(b, "{value:?}");
            },
            |d| d.record_debug(field, value),
        );
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        self.flush();
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.flush();
        &mut self.writer
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A log writer the test reads back (also `logline`'s tests).
    #[derive(Clone, Default)]
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn events() {
        let err = std::io::Error::other("gone");
        tracing::info!(
            target: "jwtgate::access",
            front = "proxy",
            method = "GET",
            path = "/a b/\"q\"\\/é/\u{7f}/\t",
            route = "",
            client = Some(tracing::field::display(std::net::Ipv4Addr::LOCALHOST)),
            absent = None::<u64>,
            status = 200u64,
            delta = -5i64,
            flag = true,
            ratio = 1.0f64,
            error = &err as &(dyn std::error::Error + 'static),
            r#type = "raw",
            shown = ?Some("x"),
            peer = %std::net::Ipv6Addr::LOCALHOST,
            quoted = %"say \"hi\"",
            big = u64::MAX,
            small = i64::MIN,
            zero = 0u64,
        );
        tracing::warn!(count = 3u64, "a message with \"quotes\" and {}", "args");
        let span = tracing::info_span!("conn", peer = "127.0.0.1:1", n = 7u64);
        let _e = span.enter();
        tracing::info!(done = false);
    }

    fn render<F>(fields: F, ansi: bool) -> String
    where
        F: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(sub, events);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_default_fields_writes() {
        for ansi in [false, true] {
            let want = render(DefaultFields::new(), ansi);
            assert!(want.contains("GET"), "{want}");
            assert_eq!(render(TextFields, ansi), want, "ansi {ansi}");
        }
    }

    #[test]
    fn verbatim_only_where_debug_adds_nothing() {
        for s in ["", "GET", "/api/v1?x=1&y=2", "a b", "~"] {
            assert!(debug_is_verbatim(s));
            assert_eq!(format!("{s:?}"), format!("\"{s}\""));
        }
        for s in ["\"", "\\", "é", "\u{7f}", "\t", "\n", "\u{1b}[31m"] {
            assert!(!debug_is_verbatim(s), "{s:?}");
        }
    }
}
