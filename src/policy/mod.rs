//! What the route file says about a request, as run-time tables: the route table and
//! upstream choice (`route`), CORS (`cors`), and token-bucket rate limits (`limit`).

pub mod cors;
pub mod limit;
pub mod route;
