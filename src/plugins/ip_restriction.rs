//! `ip-restriction` (request_filter): CIDR allow/deny lists on the client IP (the TCP peer, or
//! the X-Forwarded-For client behind `server.trusted_proxies`). Deny wins; with an allow list,
//! everything else is refused. 403 `ip_forbidden`.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use ipnet::IpNet;
use pingora::proxy::Session;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    allow: Vec<String>,
    deny: Vec<String>,
}

#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn parse_list(c: &mut Compiler, path: &str, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => out.push(n),
            Err(_) => c.error(&format!("{path}[{i}]"), format!("invalid CIDR {s:?}")),
        }
    }
    out
}

impl IpRestriction {
    pub fn allowed(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else {
            // No IP (not a TCP peer): only an open policy lets it through.
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

impl Hooks for IpRestriction {
    type State = ();
    const PHASES: u32 = phase::REQUEST;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        if cfg.allow.is_empty() && cfg.deny.is_empty() {
            c.error(&format!("{path}.config"), "needs an allow or a deny list");
            return None;
        }
        Some(IpRestriction {
            allow: parse_list(c, &format!("{path}.config.allow"), &cfg.allow),
            deny: parse_list(c, &format!("{path}.config.deny"), &cfg.deny),
        })
    }
    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if self.allowed(ctx.client_ip) {
            Outcome::Continue
        } else {
            Outcome::Respond(Reply::error_with(
                403,
                "ip_forbidden",
                "Your IP address is not allowed",
            ))
        }
    }

    /// `explain`: the client IP given, checked against the lists.
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        use serde_json::json;
        match x.client_ip {
            Some(ip) if self.allowed(Some(ip)) => json!({"result": "allowed"}),
            Some(_) => {
                x.refused = Some(403);
                json!({"result": "refused", "status": 403})
            }
            None => json!({"result": "depends on the client IP (give --client-ip)"}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: &[&str], deny: &[&str]) -> IpRestriction {
        IpRestriction {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let r = rule(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(r.allowed(Some("10.2.3.4".parse().unwrap())));
        assert!(!r.allowed(Some("10.1.3.4".parse().unwrap())));
        assert!(!r.allowed(Some("192.0.2.1".parse().unwrap())));
        let r = rule(&[], &["192.0.2.0/24"]);
        assert!(r.allowed(Some("198.51.100.1".parse().unwrap())));
        assert!(!r.allowed(Some("192.0.2.1".parse().unwrap())));
        assert!(r.allowed(None));
    }
}
