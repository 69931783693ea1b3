//! The one body type that flows through the gateway: a client's request body on its way
//! upstream, an upstream's response on its way back, or a small buffer the gateway wrote
//! itself. The two streaming cases are variants, not boxes: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Limited};
use hyper::body::Incoming;

use crate::upstream::UpstreamBody;

/// Errors a body stream can end with (client, upstream or size limit).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streaming body used for both directions.
pub struct Body(Kind);

enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body, cut off at `server.max_body_bytes`.
    Request(Limited<Incoming>),
    Upstream(UpstreamBody),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

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

/// A client's request body, limited to `max` bytes (the stream fails past it).
pub fn request(b: Incoming, max: usize) -> Body {
    Body(Kind::Request(Limited::new(b, max)))
}

/// An upstream's response body.
pub fn upstream(b: UpstreamBody) -> Body {
    Body(Kind::Upstream(b))
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
            Kind::Request(b) => Pin::new(b).poll_frame(cx),
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Request(b) => b.is_end_stream(),
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Request(b) => b.size_hint(),
            Kind::Upstream(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}
