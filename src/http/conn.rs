//! One client connection's lifetime, for every listener (https, http, admin): the
//! process-wide connection cap, the deadlines that close silent connections, and graceful
//! drain. Accepting and TLS stay in `listener`; what a request means stays in `proxy`.
//!
//! Deadlines (hyper 1.12 / hyper-util 0.1.21 leave these gaps: the auto builder's protocol
//! sniff waits for the first bytes without a timer, h2 has no handshake or idle timeout,
//! and h1's `header_read_timeout` starts as soon as a connection goes idle, so it cannot
//! tell an idle keep-alive connection from a slow head):
//! - first request: its head must be complete within `header_timeout_ms` of accept (TLS
//!   handshake, protocol sniff, h2 preface and SETTINGS, unfinished header blocks);
//! - HTTP/1.1 between requests: `keepalive_timeout_ms` until the next request's first byte,
//!   then `header_timeout_ms` from that byte until its head is complete;
//! - h2: closed with GOAWAY once no stream has been open for `keepalive_timeout_ms`;
//! - none while a request is open (bodies have `stream_idle_timeout_ms`, upstreams the
//!   route's `timeout_ms`) or after an upgrade (WebSocket).
//!
//! The deadline is one timer per connection, re-armed only when it moves earlier (or rang
//! before a later one); a request costs a few relaxed atomics and one clock read, no
//! allocation, no lock and no timer change.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

pub use crate::capacity::{Connections, Limit, Slot};
use crate::config::Server;
use crate::net::body::{Body, BoxError};

/// The longest an h2 connection closed for idleness gets to send its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The hyper connection builders every listener uses: h1 and h2 size limits and h2
/// keep-alive pings. Heads and idle connections are timed by `serve`, not by hyper.
///
/// A connection whose protocol is known before its first byte is read (ALPN on TLS, or the
/// first bytes peeked on a plaintext socket: `Proto`) goes straight to hyper's h1 or h2
/// connection. Only an undecided one goes through hyper-util's auto builder, whose
/// protocol sniff reads the first 24 bytes on their own: hyper's read buffer then grows
/// from 8 to 16 KiB on the next read (a partly filled buffer is reserved a full 8 KiB
/// again), and an idle HTTP/1.1 connection keeps the 16 KiB (issue 19).
pub struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

/// What a connection speaks, as far as is known before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 (ALPN `http/1.1`, or first bytes that are not the h2 preface).
    H1,
    /// h2 (ALPN `h2`, or the whole h2 preface seen).
    H2,
    /// Not known: hyper-util's auto builder reads the first bytes to decide.
    Sniff,
}

/// The h2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Proto {
    /// From a TLS connection's negotiated ALPN protocol.
    pub fn of_alpn(alpn: Option<&[u8]>) -> Proto {
        match alpn {
            Some(b"h2") => Proto::H2,
            Some(b"http/1.1") => Proto::H1,
            _ => Proto::Sniff,
        }
    }

    /// From the first bytes of a plaintext connection (peeked: hyper still reads them).
    pub fn of_first_bytes(first: &[u8]) -> Proto {
        if first.is_empty() {
            Proto::Sniff
        } else if first.len() >= H2_PREFACE.len() {
            if first.starts_with(H2_PREFACE) {
                Proto::H2
            } else {
                Proto::H1
            }
        } else if H2_PREFACE.starts_with(first) {
            // Part of the preface so far: let the auto builder read the rest.
            Proto::Sniff
        } else {
            Proto::H1
        }
    }
}

/// The HTTP/1.1 settings, on hyper's builder or the auto builder's (another type with the
/// same methods).
macro_rules! http1_settings {
    ($b:expr, $server:expr) => {
        $b.timer(TokioTimer::new())
            // hyper would start this timer when a connection goes idle, closing idle
            // keep-alive connections at the head timeout; `serve` times heads from their
            // first byte instead.
            .header_read_timeout(None)
            .max_buf_size($server.max_header_bytes.max(8192))
    };
}

/// The h2 settings, likewise.
macro_rules! http2_settings {
    ($b:expr, $server:expr) => {
        $b.timer(TokioTimer::new())
            .max_header_list_size($server.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(256)
            // Pings find peers that vanished while a stream is open (a long response to a
            // client whose network went away); answered pings do not keep an idle one open.
            .keep_alive_interval($server.keepalive_timeout.min(Duration::from_secs(30)))
            .keep_alive_timeout($server.header_timeout.min(Duration::from_secs(20)))
    };
}

impl Builders {
    pub fn new(server: &Server) -> Builders {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        http1_settings!(h1, server);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2_settings!(h2, server);
        // The same settings for the connections the auto builder sniffs.
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1_settings!(auto.http1(), server);
        http2_settings!(auto.http2(), server);
        Builders { h1, h2, auto }
    }
}

// === impl Activity ===

/// No head has started (`head_start_ms`).
const NONE: u64 = u64::MAX;

/// A head has started and its time is not read yet (`head_start_ms`): the socket only marks
/// it; `Activity::deadline`, polled in the same wake of the connection task, reads the
/// clock. A head that arrives whole opens its request first, so it costs no clock read.
const STARTED: u64 = u64::MAX - 1;

/// What the deadline is computed from, written by the service (requests opening and
/// closing) and the socket (bytes arriving). Times are milliseconds since `base`.
struct Activity {
    /// Accept.
    base: Instant,
    /// Requests whose response has not been sent (or dropped) yet.
    open: AtomicUsize,
    /// Requests seen (their heads complete).
    requests: AtomicU64,
    /// When `open` last went to zero.
    idle_since_ms: AtomicU64,
    /// HTTP/1.1: when the first byte after an idle period arrived.
    head_start_ms: AtomicU64,
    h2: AtomicBool,
    upgraded: AtomicBool,
    /// h2: streams close on other tasks; this wakes the deadline when the last one does.
    waker: AtomicWaker,
}

impl Activity {
    fn new(base: Instant) -> Activity {
        Activity {
            base,
            open: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_start_ms: AtomicU64::new(NONE),
            h2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(STARTED - 1)
    }

    fn at(&self, ms: u64, plus: Duration) -> Instant {
        self.base + Duration::from_millis(ms) + plus
    }

    /// A request's head is complete: it is open until its response body is dropped.
    fn open(self: &Arc<Self>, version: http::Version) -> OpenRequest {
        if version == http::Version::HTTP_2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_start_ms.store(NONE, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Bytes arrived: on an idle HTTP/1.1 connection they start the next head.
    fn on_read(&self) {
        if self.open.load(Ordering::Acquire) == 0
            && self.head_start_ms.load(Ordering::Relaxed) == NONE
            && self.requests.load(Ordering::Relaxed) > 0
        {
            self.head_start_ms.store(STARTED, Ordering::Relaxed);
        }
    }

    /// When the current head started (`NONE`: none has), reading the clock for one the
    /// socket marked `STARTED`. Unless a request opened meanwhile (it clears the mark).
    fn head_start(&self) -> u64 {
        let head = self.head_start_ms.load(Ordering::Relaxed);
        if head != STARTED {
            return head;
        }
        let now = self.since_base();
        match self.head_start_ms.compare_exchange(
            STARTED,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(other) => other,
        }
    }

    /// When the connection is to be closed as things stand, or `None` while a request is
    /// open or after an upgrade.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        if self.upgraded.load(Ordering::Relaxed) || self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.base + t.header);
        }
        if !self.h2.load(Ordering::Relaxed) {
            let head = self.head_start();
            if head != NONE {
                return Some(self.at(head, t.header));
            }
        }
        Some(self.at(self.idle_since_ms.load(Ordering::Relaxed), t.keepalive))
    }
}

/// An open request; closes it when dropped (with the response body, or with the request's
/// future when the client went away first).
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let a = &self.0;
        if a.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since_ms.store(a.since_base(), Ordering::Relaxed);
            if a.h2.load(Ordering::Relaxed) {
                a.waker.wake();
            }
        }
    }
}

/// The two timeouts a connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// `server.header_timeout_ms`.
    pub header: Duration,
    /// `server.keepalive_timeout_ms`.
    pub keepalive: Duration,
}

impl Timeouts {
    pub fn of(server: &Server) -> Timeouts {
        Timeouts {
            header: server.header_timeout,
            keepalive: server.keepalive_timeout,
        }
    }
}

// === impl Watched ===

/// The client socket: marks read progress for the deadline and holds the connection's slot.
pub struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === impl Tracked ===

/// A response body that keeps its request open until it is sent or dropped.
pub struct Tracked {
    inner: Body,
    _open: OpenRequest,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === serve ===

/// What a connection is held to, besides its deadlines.
pub struct Conn {
    pub slot: Slot,
    /// When the socket was accepted: the first request's head counts from here.
    pub accepted: Instant,
    pub timeouts: Timeouts,
    /// Set when the gateway stops: the connection finishes what is open and closes.
    pub shutdown: watch::Receiver<bool>,
    /// Held until the connection ends; the worker's drain waits for every one.
    pub drain: Option<mpsc::Sender<()>>,
}

/// Why `serve` closed a connection itself.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("no complete request head within header_timeout_ms")]
    HeadTimeout,
    #[error("idle for keepalive_timeout_ms")]
    Idle,
}

/// Serve HTTP/1.1 and h2 (with upgrades) on `io` with `handle`, until the peer closes, a
/// deadline passes, or the gateway stops. `proto`: what the connection speaks, if known.
pub async fn serve<I, F, Fut>(
    io: I,
    proto: Proto,
    conn: Conn,
    builders: &Builders,
    peer: std::net::SocketAddr,
    handle: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Conn {
        slot,
        accepted,
        timeouts,
        shutdown,
        drain,
    } = conn;
    let activity = Arc::new(Activity::new(accepted));
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
        _slot: slot,
    });
    let requests = activity.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let open = requests.open(req.version());
        let answer = handle(req);
        async move {
            let resp = answer.await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                open.0.upgraded.store(true, Ordering::Relaxed);
            }
            Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _open: open }))
        }
    });
    let held = Held {
        activity,
        accepted,
        timeouts,
        shutdown,
        peer,
    };
    // Every connection's task has room for its largest state, idle or not: HTTP/1.1 is
    // kept inline; h2 and sniffed connections, larger and rarer, are boxed (one
    // allocation per connection), so an idle HTTP/1.1 connection does not carry their room.
    match proto {
        Proto::H1 => {
            let c = builders.h1.serve_connection(io, svc).with_upgrades();
            drive(c, |c| c.graceful_shutdown(), held).await
        }
        Proto::H2 => {
            let c = Box::pin(builders.h2.serve_connection(io, svc));
            drive(c, |c| c.get_mut().as_mut().graceful_shutdown(), held).await
        }
        Proto::Sniff => {
            let c = Box::pin(builders.auto.serve_connection_with_upgrades(io, svc));
            drive(c, |c| c.get_mut().as_mut().graceful_shutdown(), held).await
        }
    }
    drop(drain);
}

/// What `drive` holds a connection to.
struct Held {
    activity: Arc<Activity>,
    accepted: Instant,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
}

/// Run one hyper connection (`graceful` asks it to finish what is open and close) under
/// its deadlines and the gateway's shutdown.
async fn drive<C, E, G>(conn: C, graceful: G, held: Held)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    G: Fn(Pin<&mut C>),
{
    let Held {
        activity,
        accepted,
        timeouts,
        mut shutdown,
        peer,
    } = held;
    let mut conn = std::pin::pin!(conn);
    let mut deadline = Deadline {
        sleep: Box::pin(tokio::time::sleep_until(accepted + timeouts.header)),
        activity: &activity,
        timeouts,
    };
    let mut draining = false;
    let probe = shutdown.clone();
    let mut stop = Quiet {
        fut: std::pin::pin!(shutdown.wait_for(|s| *s)),
        probe,
        waker: None,
    };
    let closed = loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with error");
                }
                break None;
            }
            _ = &mut stop, if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
            why = &mut deadline => break Some(why),
        }
    };
    let Some(why) = closed else {
        return;
    };
    tracing::debug!(peer = %peer, reason = %why, "closing connection");
    if matches!(why, Closed::Idle) && activity.h2.load(Ordering::Relaxed) {
        // GOAWAY tells the client no stream was lost, so it may retry on a new connection.
        graceful(conn.as_mut());
        let _ = tokio::time::timeout(GOAWAY_GRACE, conn.as_mut()).await;
    }
}

/// The gateway's shutdown signal (`fut`, waiting on `probe`'s channel) as the connection
/// task waits for it: polled again only when the signal has changed since (`probe`, one
/// atomic load) or the task's waker is another. Polling the waiting `fut` takes the
/// channel's waiter lock, and the connection task wakes a few times per request.
struct Quiet<'a, F> {
    fut: Pin<&'a mut F>,
    probe: watch::Receiver<bool>,
    /// The waker `fut` was last polled with, while it is pending.
    waker: Option<std::task::Waker>,
}

impl<F: Future> Future for Quiet<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let same = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same && matches!(this.probe.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        let r = this.fut.as_mut().poll(cx);
        this.waker = r.is_pending().then(|| cx.waker().clone());
        r
    }
}

/// Resolves when the connection's deadline has passed. Polled on every wake of the
/// connection task, so a deadline moved earlier by the socket (a head starting) is seen at
/// once; one moved by another task (an h2 stream closing) wakes it through `waker`.
///
/// `sleep` never rings after the deadline, but may ring before it: a deadline moved earlier
/// re-arms it at once, one moved later (each request's end pushes the keep-alive deadline
/// on) leaves it as it is, and when it rings early it is re-armed then. A keep-alive
/// connection's requests then touch no timer; the timer wakes it once per
/// `keepalive_timeout_ms` at most.
struct Deadline<'a> {
    sleep: Pin<Box<Sleep>>,
    activity: &'a Activity,
    timeouts: Timeouts,
}

impl Future for Deadline<'_> {
    type Output = Closed;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closed> {
        let this = &mut *self;
        let wanted = this.activity.deadline(this.timeouts);
        let Some(at) = wanted else {
            if this.activity.h2.load(Ordering::Relaxed) {
                this.activity.waker.register(cx.waker());
                // A stream may have closed between the check and the registration.
                if this.activity.deadline(this.timeouts).is_some() {
                    cx.waker().wake_by_ref();
                }
            }
            return Poll::Pending;
        };
        if at < this.sleep.deadline() {
            this.sleep.as_mut().reset(at);
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.sleep.deadline() < at {
                // Rang early: the deadline has moved on since it was armed.
                this.sleep.as_mut().reset(at);
                continue;
            }
            let a = this.activity;
            let idle = a.requests.load(Ordering::Relaxed) > 0
                && (a.h2.load(Ordering::Relaxed)
                    || a.head_start_ms.load(Ordering::Relaxed) == NONE);
            return Poll::Ready(if idle {
                Closed::Idle
            } else {
                Closed::HeadTimeout
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        keepalive: Duration::from_secs(75),
    };

    #[tokio::test(start_paused = true)]
    async fn deadline_follows_the_connection_phase() {
        let base = Instant::now();
        let a = Arc::new(Activity::new(base));
        assert_eq!(a.deadline(T), Some(base + T.header), "first request");
        a.on_read();
        assert_eq!(
            a.deadline(T),
            Some(base + T.header),
            "first head from accept"
        );
        let open = a.open(http::Version::HTTP_11);
        assert_eq!(a.deadline(T), None, "a request is open");
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(open);
        let idle = base + Duration::from_secs(2);
        assert_eq!(a.deadline(T), Some(idle + T.keepalive), "idle keep-alive");
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(
            a.deadline(T),
            Some(idle + Duration::from_secs(1) + T.header),
            "next head from its first byte"
        );
        let open = a.open(http::Version::HTTP_11);
        open.0.upgraded.store(true, Ordering::Relaxed);
        drop(open);
        assert_eq!(a.deadline(T), None, "upgraded");
    }

    /// A connection's deadline as `serve` makes it at `accepted`, over `a`.
    fn deadline(a: &Activity, accepted: Instant) -> Pin<Box<Deadline<'_>>> {
        Box::pin(Deadline {
            sleep: Box::pin(tokio::time::sleep_until(accepted + T.header)),
            activity: a,
            timeouts: T,
        })
    }

    /// The keep-alive deadline moving later leaves the timer alone; the timer ringing before
    /// the deadline re-arms it; a head starting moves it earlier at once.
    #[tokio::test(start_paused = true)]
    async fn deadline_timer_is_rearmed_lazily_and_never_late() {
        let base = Instant::now();
        let a = Arc::new(Activity::new(base));
        let mut d = deadline(&a, base);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut poll = |d: &mut Pin<Box<Deadline<'_>>>| match d.as_mut().poll(&mut cx) {
            Poll::Ready(why) => Some(why.to_string()),
            Poll::Pending => None,
        };
        // A first request, answered after 1 s: idle from then.
        drop(a.open(http::Version::HTTP_11));
        assert_eq!(poll(&mut d), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(a.open(http::Version::HTTP_11));
        assert_eq!(poll(&mut d), None);
        let first = d.sleep.deadline();
        assert_eq!(
            first,
            base + T.header,
            "earlier than the deadline: left alone"
        );
        // It rings at the head timeout, early: re-armed to the keep-alive deadline.
        tokio::time::advance(T.header).await;
        assert_eq!(poll(&mut d), None);
        let idle = base + Duration::from_secs(1) + T.keepalive;
        assert_eq!(d.sleep.deadline(), idle);
        // Another request: the deadline moves on, the timer does not.
        let open = a.open(http::Version::HTTP_11);
        assert_eq!(poll(&mut d), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(open);
        assert_eq!(poll(&mut d), None);
        assert_eq!(d.sleep.deadline(), idle);
        // Bytes of a next head: its timeout is earlier, armed at once, and closes.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(poll(&mut d), None);
        let head = Instant::now() + T.header;
        assert_eq!(d.sleep.deadline(), head);
        tokio::time::advance(T.header - Duration::from_millis(1)).await;
        assert_eq!(poll(&mut d), None, "not before the head timeout");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(poll(&mut d), Some(Closed::HeadTimeout.to_string()));
    }

    /// An idle connection is closed at its keep-alive deadline, not before and not later,
    /// although the timer was armed for an earlier one.
    #[tokio::test(start_paused = true)]
    async fn idle_connection_closes_at_its_keepalive_deadline() {
        let base = Instant::now();
        let a = Arc::new(Activity::new(base));
        let mut d = deadline(&a, base);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(a.open(http::Version::HTTP_11));
        let idle = base + Duration::from_secs(3) + T.keepalive;
        assert!(d.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(idle - Instant::now() - Duration::from_millis(1)).await;
        assert!(d.as_mut().poll(&mut cx).is_pending(), "not before");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(
            d.as_mut().poll(&mut cx),
            Poll::Ready(Closed::Idle)
        ));
    }

    /// The shutdown signal is polled once while nothing changes, and seen when it comes.
    #[tokio::test]
    async fn shutdown_signal_is_polled_only_when_it_changed() {
        let (tx, mut rx) = watch::channel(false);
        let probe = rx.clone();
        let polls = std::cell::Cell::new(0);
        let mut wait = std::pin::pin!(rx.wait_for(|s| *s));
        let counted = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            wait.as_mut().poll(cx).map(|r| r.is_ok())
        });
        let mut stop = Quiet {
            fut: std::pin::pin!(counted),
            probe,
            waker: None,
        };
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        for _ in 0..3 {
            assert!(Pin::new(&mut stop).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1);
        tx.send(true).unwrap();
        assert_eq!(Pin::new(&mut stop).poll(&mut cx), Poll::Ready(true));
        assert_eq!(polls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_bytes_do_not_keep_an_idle_connection_open() {
        let base = Instant::now();
        let a = Arc::new(Activity::new(base));
        drop(a.open(http::Version::HTTP_2));
        a.on_read();
        assert_eq!(a.deadline(T), Some(base + T.keepalive));
    }

    #[test]
    fn protocol_from_alpn_or_first_bytes() {
        assert_eq!(Proto::of_alpn(Some(b"h2")), Proto::H2);
        assert_eq!(Proto::of_alpn(Some(b"http/1.1")), Proto::H1);
        assert_eq!(Proto::of_alpn(None), Proto::Sniff);
        assert_eq!(Proto::of_first_bytes(b"GET / HTTP/1.1\r\n"), Proto::H1);
        assert_eq!(
            Proto::of_first_bytes(b"P"),
            Proto::Sniff,
            "could be the preface"
        );
        assert_eq!(Proto::of_first_bytes(b"PRI * HTTP/2.0"), Proto::Sniff);
        assert_eq!(Proto::of_first_bytes(b"POST / HTTP/1.1\r\n"), Proto::H1);
        assert_eq!(Proto::of_first_bytes(H2_PREFACE), Proto::H2);
        assert_eq!(Proto::of_first_bytes(b""), Proto::Sniff);
    }

    #[test]
    fn limit_refuses_over_the_cap_and_frees_on_drop() {
        let l = Limit::new(2);
        let (a, b) = (l.try_acquire(), l.try_acquire());
        assert!(a.is_some() && b.is_some());
        assert!(l.try_acquire().is_none());
        assert_eq!((l.active(), l.refused.get()), (2, 1));
        drop(a);
        assert!(l.try_acquire().is_some());
    }
}
