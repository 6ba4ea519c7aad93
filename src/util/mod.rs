//! Helpers shared across layers, with no Pingora phase of their own: the bottom layer, so
//! every module may use them and they use no other gatehouse module.
//!
//! - [`clock`]: the cheap monotonic clocks the atomics and limiters count in;
//! - [`dn`]: RFC 4514 distinguished names in a normalised form (client-certificate subjects);
//! - [`digest`]: stable identity strings of configuration parts (registry keys);
//! - [`percent`]: canonical percent-encoding of request paths (router, cache keys, purges);
//! - [`redact`]: URLs without credentials, for logs and `/status`;
//! - [`form`]: `application/x-www-form-urlencoded` decoding;
//! - [`handshake`]: the handshake-signature checks every rustls certificate verifier shares;
//! - [`hex_id`]: fixed-size lower-case hex ids (trace and span ids);
//! - [`registry`]: the weak registry of state that survives reloads.

pub mod clock;
pub mod digest;
pub mod dn;
pub mod form;
pub mod handshake;
pub mod hex_id;
pub mod percent;
pub mod redact;
pub mod registry;
