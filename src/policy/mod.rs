//! What the route file says about a request, as run-time tables: the route table and
//! upstream choice (`route`), CORS (`cors`), token-bucket rate limits (`limit`), and the
//! authorization rules over a verified caller (`rules`).

pub mod cors;
pub mod limit;
pub mod route;
pub mod rules;
