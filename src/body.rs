//! The one body type that flows through the gateway: streamed from hyper, or a small
//! buffer the gateway wrote itself.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Errors a body stream can end with (client, upstream or size limit).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streaming body used for both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body the gateway produced itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Box any streaming body.
pub fn stream<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}
