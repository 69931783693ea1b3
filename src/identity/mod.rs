//! Who is calling, and may they still: the identity provider's metadata (`oidc`) and keys
//! (`jwks`), where the credential is and whether it verifies (`auth`), proof of possession for bound tokens (`sender`), revocation
//! (`revocation`), leaked-token detection (`anomaly`), the gateway-signed identity for
//! upstreams (`assertion`), renewing tokens at the edge (`refresh`), signing browsers
//! in (`login`), and revocations the identity provider sends (`signals`: back-channel
//! logout, Shared Signals). Listed in dependency order.

pub mod oidc;
// (keys, then verification)
pub mod jwks;
// (verification)
pub mod auth;
// (sender-constrained tokens: DPoP proofs, certificate binding)
pub mod sender;
// (revocation store and cache)
pub mod revocation;
// (leak detection)
pub mod anomaly;
// (assertions)
pub mod assertion;
// (refresh grant)
pub mod refresh;
// (sign-in)
pub mod login;
// (back-channel logout, Shared Signals)
pub mod signals;
