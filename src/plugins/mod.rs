//! Plugin registry: typed plugins built once at config load, run in the contract's fixed
//! order (`ORDER`) whatever their order in the file. A route entry replaces a global entry of
//! the same name.
//!
//! Each plugin gets its own module with a typed config (deserialized from the YAML `config`
//! value with path-aware errors) and per-phase hooks returning an explicit [`Outcome`].
//! Names the contract defines but this build does not implement yet are refused at load
//! with "not implemented yet": never silently ignored.

use crate::config::compile::Compiler;

/// The contract's fixed execution order.
pub const ORDER: &[&str] = &[
    "correlation-id",
    "cors",
    "ip-restriction",
    "request-size-limiting",
    "key-auth",
    "jwt",
    "acl",
    "rate-limiting",
    "concurrency-limiting",
    "proxy-cache",
    "request-transformer",
    "response-transformer",
    "security-headers",
];

/// What a request-phase hook decided.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    /// Answer with the gateway's JSON error: (status, code, message).
    Respond(u16, &'static str, &'static str),
}

/// One configured plugin instance. A variant per implemented plugin; dispatch by `match`
/// keeps the hot path free of boxed futures.
#[derive(Debug)]
pub enum Plugin {}

impl Plugin {
    pub fn name(&self) -> &'static str {
        match *self {}
    }
}

/// The plugins of one route (globals merged in), in `ORDER`.
#[derive(Debug, Default)]
pub struct Chain {
    /// Shared with other routes when it comes from the global list.
    pub plugins: Vec<std::sync::Arc<Plugin>>,
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }
}

/// Builds one plugin from its YAML entry. `path` is the YAML path of the entry
/// (`routes[2].plugins[0]`).
pub fn build(
    c: &mut Compiler,
    path: &str,
    name: &str,
    _config: Option<&serde_yaml::Value>,
) -> Option<Plugin> {
    if ORDER.contains(&name) {
        c.error(
            &format!("{path}.name"),
            format!("plugin \"{name}\" is not implemented yet in this build"),
        );
    } else {
        c.error(
            &format!("{path}.name"),
            format!("unknown plugin \"{name}\" (known: {})", ORDER.join(", ")),
        );
    }
    None
}
