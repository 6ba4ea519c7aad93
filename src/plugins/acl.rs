//! `acl` (request_filter, after key-auth and jwt): the authenticated request's roles must
//! include one of `allow_roles`. Roles come from the JWT's `roles_claim` claim when the
//! request was authenticated by `jwt` (an array of strings, or one string of names separated
//! by spaces or commas), otherwise from the consumer's `roles` (key-auth). No role matching:
//! 403 `forbidden`; no authenticated consumer at all: 401 `unauthorized`.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::ctx::RequestCtx;
use pingora::proxy::Session;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    allow_roles: Option<Vec<String>>,
    roles_claim: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_roles: None,
            roles_claim: "roles".into(),
        }
    }
}

#[derive(Debug)]
pub struct Acl {
    allow: Vec<String>,
    roles_claim: String,
}

/// What the acl decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Forbidden,
    Unauthenticated,
}

impl Acl {
    /// The allowed roles, for `explain`.
    pub fn allow_roles(&self) -> &[String] {
        &self.allow
    }

    fn allowed(&self, role: &str) -> bool {
        self.allow.iter().any(|a| a == role)
    }

    pub fn decide(&self, ctx: &RequestCtx) -> Decision {
        let ok = if let Some(token) = &ctx.plugins.jwt {
            token
                .claims
                .get(&self.roles_claim)
                .is_some_and(|v| super::jwt::roles_in(v).into_iter().any(|r| self.allowed(r)))
        } else if let Some(consumer) = ctx.consumer.and_then(|i| ctx.rt.consumers.get(i)) {
            consumer.roles.iter().any(|r| self.allowed(r))
        } else {
            return Decision::Unauthenticated;
        };
        if ok {
            Decision::Allow
        } else {
            Decision::Forbidden
        }
    }
}

impl Hooks for Acl {
    type State = ();
    const PHASES: u32 = phase::REQUEST;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let Some(allow) = cfg.allow_roles else {
            c.error(
                &format!("{path}.config.allow_roles"),
                "is required (the roles allowed on this route)",
            );
            return None;
        };
        if allow.is_empty() || allow.iter().any(|r| r.trim().is_empty()) {
            c.error(
                &format!("{path}.config.allow_roles"),
                "needs at least one role, none of them empty",
            );
            return None;
        }
        if cfg.roles_claim.is_empty() {
            c.error(&format!("{path}.config.roles_claim"), "must not be empty");
            return None;
        }
        Some(Acl {
            allow,
            roles_claim: cfg.roles_claim,
        })
    }
    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let reply = match self.decide(ctx) {
            Decision::Allow => return Outcome::Continue,
            Decision::Forbidden => {
                Reply::error_with(403, "forbidden", "Your roles do not allow this request")
            }
            Decision::Unauthenticated => {
                Reply::error_with(401, "unauthorized", "Authentication is required")
            }
        };
        Outcome::Respond(reply)
    }

    /// `explain`: the roles of the consumer an earlier plugin authenticated.
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        use serde_json::json;
        match x.consumer {
            Some(i) => {
                let roles =
                    x.rt.consumers
                        .get(i)
                        .map(|c| c.roles.clone())
                        .unwrap_or_default();
                if roles.iter().any(|r| self.allow_roles().contains(r)) {
                    json!({"result": "allowed", "roles": roles, "allow_roles": self.allow_roles()})
                } else {
                    x.refused = Some(403);
                    json!({"result": "refused", "status": 403, "roles": roles, "allow_roles": self.allow_roles()})
                }
            }
            // A token's roles claim, a client certificate's consumer: known at request time.
            None if x.deferred_identity.is_some() => {
                let on = x.deferred_identity.unwrap_or_default();
                json!({"result": format!("depends on {on} (decided at request time)"), "allow_roles": self.allow_roles()})
            }
            None => {
                x.refused = Some(401);
                json!({"result": "refused", "status": 401, "why": "no authenticated consumer"})
            }
        }
    }
}
