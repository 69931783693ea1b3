//! The one body type that flows through the gateway: a client's request body on its way
//! upstream, an upstream's response on its way back, or a small buffer the gateway wrote
//! itself. The two streaming cases are variants, not boxes: no allocation per request.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Limited};
use hyper::body::Incoming;

use crate::net::UpstreamBody;

/// Errors a body stream can end with (client, upstream or size limit).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streaming body used for both directions.
pub struct Body(Kind);

enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body, cut off at `server.max_body_bytes`. This and `Upstream`
    /// are boxed so that a `Body` is 40 bytes, not 136: requests and responses are moved
    /// a dozen times each on their way through hyper's client (issue 19).
    Request(Box<Idle<Limited<Incoming>>>),
    Upstream(Box<Idle<UpstreamBody>>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// A response whose access-log line is written once it has been sent (or dropped):
    /// boxed with the line (one allocation), and used only while the access log is on.
    Logged(Box<Logged>),
}

/// Body bytes a request carried, counted where the body is read (by the upstream
/// connection) and read by the access-log line. Made only while the access log is on.
pub type Tally = Arc<AtomicU64>;

/// What a response body does at its end: receives the count of bytes it sent.
pub trait OnSent: Send {
    fn sent(&mut self, bytes: u64);
}

/// A response body that counts what it sends and reports it when dropped (hyper drops a
/// body once it has written it, or when the client went away mid-way). `on_sent` is the
/// last field, so a `Box<Logged<Line>>` becomes a `Box<Logged>` without a second box.
pub struct Logged<T: OnSent + ?Sized = dyn OnSent> {
    inner: Body,
    sent: u64,
    on_sent: T,
}

impl<T: OnSent + ?Sized> Drop for Logged<T> {
    fn drop(&mut self) {
        self.on_sent.sent(self.sent);
    }
}

/// Which side let a body go silent for longer than `server.stream_idle_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdleTimeout {
    #[error("the client sent no body data for longer than stream_idle_timeout_ms")]
    Client,
    #[error("the upstream sent no body data for longer than stream_idle_timeout_ms")]
    Upstream,
}

/// A streaming body that fails once it has been silent for `timeout`. The timer is armed
/// only when the stream has to wait, so a body that is already there costs nothing.
struct Idle<B> {
    inner: B,
    timeout: Duration,
    side: IdleTimeout,
    /// Created at the first wait; re-armed at each later one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// Told when the stream has ended (request bodies: see `BodySent`).
    sent: Option<tokio::sync::oneshot::Sender<()>>,
    /// Counts data bytes, when the access log wants them.
    tally: Option<Tally>,
}

impl<B: http_body::Body> Idle<B> {
    fn new(inner: B, timeout: Duration, side: IdleTimeout) -> Idle<B> {
        Idle {
            inner,
            timeout,
            side,
            timer: None,
            armed: false,
            sent: None,
            tally: None,
        }
    }

    fn poll_frame<E: Into<BoxError>>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut B, &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, E>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = poll(&mut self.inner, cx) {
            self.armed = false;
            if let (Some(t), Some(Ok(f))) = (&self.tally, &frame) {
                if let Some(d) = f.data_ref() {
                    t.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            let ended = !matches!(frame, Some(Ok(_))) || self.inner.is_end_stream();
            if ended {
                if let Some(tx) = self.sent.take() {
                    let _ = tx.send(());
                }
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if !self.armed {
            self.armed = true;
            let deadline = tokio::time::Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|t| std::future::Future::poll(t.as_mut(), cx).is_ready());
        if !fired {
            return Poll::Pending;
        }
        match self.side {
            IdleTimeout::Client => tracing::debug!("{}", self.side),
            IdleTimeout::Upstream => tracing::warn!("{}; response cut", self.side),
        }
        Poll::Ready(Some(Err(Box::new(self.side))))
    }
}

/// Resolves once a request body has been read to its end (or failed, or was dropped):
/// the route's `timeout_ms` counts from then, not during a slow upload.
pub type BodySent = tokio::sync::oneshot::Receiver<()>;

/// A body the gateway produced itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let b = bytes.into();
    Body(if b.is_empty() {
        Kind::Empty
    } else {
        Kind::Full(Some(b))
    })
}

/// An empty body.
pub fn empty() -> Body {
    Body(Kind::Empty)
}

/// A client's request body, limited to `max` bytes and to `idle` between data (the stream
/// fails past either), and the signal that it has been read to its end. `tally`, when
/// given, counts the bytes read.
pub fn request(b: Incoming, max: usize, idle: Duration, tally: Option<Tally>) -> (Body, BodySent) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut body = Idle::new(Limited::new(b, max), idle, IdleTimeout::Client);
    body.sent = Some(tx);
    body.tally = tally;
    (Body(Kind::Request(Box::new(body))), rx)
}

/// `inner`, counting the data bytes it sends; `on_sent` gets the count when it is dropped.
pub fn logged<T: OnSent + 'static>(inner: Body, on_sent: T) -> Body {
    let logged: Box<Logged<T>> = Box::new(Logged {
        inner,
        sent: 0,
        on_sent,
    });
    Body(Kind::Logged(logged))
}

/// An upstream's response body, failing after `idle` without data.
pub fn upstream(b: UpstreamBody, idle: Duration) -> Body {
    Body(Kind::Upstream(Box::new(Idle::new(
        b,
        idle,
        IdleTimeout::Upstream,
    ))))
}

/// Box any other streaming body.
pub fn stream<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body(Kind::Boxed(b.map_err(Into::into).boxed_unsync()))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Request(b) => b.poll_frame(cx, |b, cx| Pin::new(b).poll_frame(cx)),
            Kind::Upstream(b) => b.poll_frame(cx, |b, cx| Pin::new(b).poll_frame(cx)),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
            Kind::Logged(l) => {
                let frame = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame {
                    if let Some(d) = f.data_ref() {
                        l.sent += d.len() as u64;
                    }
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Request(b) => b.inner.is_end_stream(),
            Kind::Upstream(b) => b.inner.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
            Kind::Logged(l) => l.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Request(b) => b.inner.size_hint(),
            Kind::Upstream(b) => b.inner.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
            Kind::Logged(l) => l.inner.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}
