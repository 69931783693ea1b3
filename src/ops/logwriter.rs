//! The log's writer: lines are appended to one shared buffer, and a background thread
//! writes what has gathered to stderr in one `write` every few milliseconds. A worker never
//! waits on stderr (or on another worker holding it), as with tracing-appender's
//! non-blocking writer, which this replaces (issue 19): that one copied each line into a
//! `Vec` of its own, sent it through a channel, and its thread freed it (never back into
//! the worker's malloc cache) after one `write` per line. Here a line costs a short lock,
//! one copy into a buffer both sides keep, and no system call on the worker: the thread
//! is woken only for the first line after it went idle, or when the buffer is full.
//!
//! Not lossy: a worker whose line does not fit (the writer `LIMIT` bytes behind) waits
//! for the writer. `Flush` (the guard) writes what is left and stops the thread.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

/// Bytes the writer may fall behind before a worker waits: about half a second of access
/// log at 30,000 requests/s (lines of ~300 bytes).
pub const LIMIT: usize = 4 * 1024 * 1024;

/// How long the writer lets lines gather after a write before it takes them: a bound on
/// how late a line reaches stderr while requests keep coming.
const GATHER: Duration = Duration::from_millis(5);

/// A buffer this large is given back after the write, not kept for the next batch.
const KEPT: usize = 256 * 1024;

struct State {
    /// Lines not yet taken by the writer.
    pending: Vec<u8>,
    /// The writer waits for a line (it had nothing to write): the next line wakes it.
    idle: bool,
    /// Workers wait for room.
    full: bool,
    /// The guard was dropped: write what is left and stop.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer's: a first line, room needed, or closing.
    wake_writer: Condvar,
    /// The workers': the writer took the lines, there is room again.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer of whole lines: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Append one or more whole lines.
    fn push(&self, line: &[u8]) {
        let mut s = self.lock();
        while s.pending.len() + line.len() > LIMIT && !s.pending.is_empty() && !s.closed {
            s.full = true;
            self.wake_writer.notify_one();
            s = self.room.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.pending.extend_from_slice(line);
        let wake = std::mem::take(&mut s.idle);
        drop(s);
        if wake {
            self.wake_writer.notify_one();
        }
    }
}

/// Where the log's lines go: cheap to clone, one per `tracing` writer and text sink.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

/// Dropping it writes the lines still pending and stops the writer's thread. Keep it
/// until exit.
#[must_use = "dropping the guard stops the log's writer"]
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Start the writer thread (`name`) writing to `out`.
    pub fn start<W: Write + Send + 'static>(name: &str, out: W) -> io::Result<(Self, Flush)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::new(),
                idle: false,
                full: false,
                closed: false,
            }),
            wake_writer: Condvar::new(),
            room: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(&theirs, out))?;
        let flush = Flush {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((LogWriter(shared), flush))
    }

    /// Append whole lines (each ending in `\n`) for the writer.
    pub fn write_lines(&self, lines: &[u8]) {
        self.0.push(lines);
    }
}

/// The writer thread: wait for a line, let more gather for `GATHER` (unless closing or
/// full), take them all, write them in one call; again.
fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut s = shared.lock();
        if s.pending.is_empty() && !s.closed {
            s.idle = true;
            s = shared
                .wake_writer
                .wait_while(s, |s| s.idle && !s.closed)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if !s.closed && !s.full {
            drop(s);
            thread::sleep(GATHER);
            s = shared.lock();
        }
        if s.pending.is_empty() && s.closed {
            return;
        }
        std::mem::swap(&mut s.pending, &mut batch);
        let was_full = std::mem::take(&mut s.full);
        drop(s);
        if was_full {
            shared.room.notify_all();
        }
        // Nowhere to report a failed write of the log itself; the lines are dropped.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > KEPT {
            batch = Vec::new();
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tracing-subscriber` writes each formatted event with one `write_all`.
impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` the test reads back: everything written, and how many writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines from several threads all reach the output whole, each thread's in its own
    /// order, in fewer writes than lines; dropping the guard writes what is left.
    #[test]
    fn every_line_arrives_whole_and_in_order_per_thread() {
        let sink = Sink::default();
        let (w, flush) = LogWriter::start("test-log", sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_lines(format!("t{t} line {i} {}\n", "x".repeat(i % 90)).as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let (out, writes) = std::mem::take(&mut *sink.0.lock().unwrap());
        let text = String::from_utf8(out).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts.next().unwrap()[1..].parse().unwrap();
            assert_eq!(parts.next(), Some("line"));
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            assert_eq!(parts.next().unwrap_or(""), "x".repeat(i % 90));
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        assert!(writes < 20_000, "{writes} writes for 20,000 lines");
    }

    /// A writer that is stuck makes workers wait once `LIMIT` bytes are pending; nothing
    /// is dropped, and they go on when it writes again.
    #[test]
    fn a_slow_writer_holds_workers_back_without_losing_lines() {
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (open, cv) = &*self.0;
                let _g = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (w, flush) = LogWriter::start("test-log", Gate(gate.clone(), sink.clone())).unwrap();
        let line = [b'y'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        let lines = 3 * LIMIT / line.len();
        let worker = {
            let w = w.clone();
            let line = line.clone();
            thread::spawn(move || {
                for _ in 0..lines {
                    w.write_lines(&line);
                }
            })
        };
        // The worker fills the buffer and waits (the writer holds one batch, at most).
        while w.0.lock().pending.len() + line.len() <= LIMIT {
            thread::yield_now();
        }
        assert!(!worker.is_finished());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        worker.join().unwrap();
        drop(flush);
        let out = sink.0.lock().unwrap();
        assert_eq!(out.0.len(), lines * line.len());
    }
}
