//! `mtls-auth` (request_filter, upstream_request_filter): the client certificate verified in
//! the TLS handshake (`server.tls.client_auth`, `RequestCtx::client_cert`) identifies a
//! consumer by one of its `mtls_credentials`: the certificate's subject (compared in the
//! normalised form of [`crate::util::dn`]) or one of its subjectAltNames (compared exactly).
//! No verified certificate (also every request on a plain-HTTP listener): 401
//! `missing_client_certificate`; a certificate of no consumer, or one whose subject and SANs
//! point at different consumers: 403 `unknown_client_certificate`.
//!
//! The certificate was verified by rustls before any request was read, so nothing here
//! checks signatures: a lookup in tables built once per config snapshot, without
//! allocating (the subject is hashed and compared token by token as it is normalised).
//! The consumer goes into `ctx.consumer` and upstream as `X-Consumer-Username`, exactly as
//! key-auth sets it; with `upstream_header` the verified subject goes upstream too, and
//! that header is an identity header of the route (a client's copy, in any spelling, is
//! dropped). Outcomes are counted in `mtls_auth_requests_total{route,outcome}` through
//! handles resolved when the config is installed.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::ctx::{RequestCtx, Runtime};
use crate::model::MtlsCredential;
use crate::util::dn;
use crate::util::registry::Registry;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::OnceLock;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Sends the verified certificate's subject (RFC 4514) upstream in this header.
    upstream_header: Option<String>,
    /// Kong's key (as key-auth's): `false` lets CORS preflights through unauthenticated.
    run_on_preflight: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream_header: None,
            run_on_preflight: true,
        }
    }
}

/// Why a request is refused, or that it passed: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No verified client certificate on the connection.
    NoCertificate,
    /// A verified certificate that identifies no consumer.
    UnknownCertificate,
    /// A verified certificate whose subject and SANs identify different consumers.
    Ambiguous,
}

impl Verdict {
    fn outcome(self) -> usize {
        match self {
            Verdict::Allowed => 0,
            Verdict::NoCertificate => 1,
            Verdict::UnknownCertificate | Verdict::Ambiguous => 2,
        }
    }

    fn reply(self) -> Reply {
        match self {
            Verdict::NoCertificate => Reply::error_with(
                401,
                "missing_client_certificate",
                "A verified client certificate is required",
            ),
            Verdict::Ambiguous => Reply::error_with(
                403,
                "unknown_client_certificate",
                "The client certificate matches more than one consumer",
            ),
            Verdict::Allowed | Verdict::UnknownCertificate => Reply::error_with(
                403,
                "unknown_client_certificate",
                "The client certificate identifies no consumer",
            ),
        }
    }
}

/// `outcome` label values, indexed by [`Verdict::outcome`].
const OUTCOMES: [&str; 3] = ["allowed", "no_certificate", "unknown_certificate"];

type Counters = [IntCounter; 3];

/// Hash of a normalised subject -> the subjects with that hash (normalised) and their
/// consumers.
type Subjects = HashMap<u64, Vec<(Box<[dn::Token]>, usize)>>;

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    crate::observe::metrics::registry().counter_vec(
        "mtls_auth_requests_total",
        "Requests checked by mtls-auth, by route and outcome (allowed, no_certificate, unknown_certificate).",
        &["route", "outcome"],
    )
});

fn counters(route: &str) -> Counters {
    OUTCOMES.map(|o| REQUESTS.with_label_values(&[route, o]))
}

pub struct MtlsAuth {
    /// `upstream_header`, as a slice for [`Hooks::identity_headers`] (empty or one name).
    upstream_header: Vec<HeaderName>,
    run_on_preflight: bool,
    /// Hash of a normalised subject -> (normalised subject, consumer): the hash is computed
    /// from the certificate's subject without building its normalised form.
    subjects: Subjects,
    sans: HashMap<String, usize>,
    /// The outcome counters of each route of the installed snapshot, by route index (`None`
    /// for routes without this instance); set by [`Hooks::install`].
    counters: OnceLock<Box<[Option<Counters>]>>,
}

impl std::fmt::Debug for MtlsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAuth")
            .field("upstream_header", &self.upstream_header)
            .field("run_on_preflight", &self.run_on_preflight)
            .field("subjects", &self.subjects.len())
            .field("sans", &self.sans.len())
            .finish_non_exhaustive()
    }
}

fn subject_hash(normal: &[dn::Token]) -> u64 {
    let mut h = DefaultHasher::new();
    for t in normal {
        h.write_u16(*t);
    }
    h.finish()
}

impl MtlsAuth {
    /// The consumer a verified certificate with `subject` (RFC 4514) and `sans` identifies.
    pub fn identify(&self, subject: &str, sans: &[String]) -> Result<usize, Verdict> {
        let mut found: Option<usize> = None;
        let mut ambiguous = false;
        let mut add = |c: usize| match found {
            None => found = Some(c),
            Some(f) if f == c => {}
            Some(_) => ambiguous = true,
        };
        if !self.subjects.is_empty() {
            let mut h = DefaultHasher::new();
            if dn::hash_into(subject, &mut h) {
                for (normal, c) in self.subjects.get(&h.finish()).into_iter().flatten() {
                    if dn::matches(subject, normal) {
                        add(*c);
                    }
                }
            }
        }
        for san in sans {
            if let Some(c) = self.sans.get(san.as_str()) {
                add(*c);
            }
        }
        match found {
            _ if ambiguous => Err(Verdict::Ambiguous),
            Some(c) => Ok(c),
            None => Err(Verdict::UnknownCertificate),
        }
    }

    fn count(&self, ctx: &RequestCtx, v: Verdict) {
        let handles = self
            .counters
            .get()
            .and_then(|t| t.get(ctx.route?)?.as_ref());
        if let Some(h) = handles {
            h[v.outcome()].inc();
        }
    }
}

/// `subject` as a header value: bytes a header cannot carry (control characters) are
/// written as RFC 4514 hex escapes (`\0A`), so the value stays the same name.
fn subject_header(subject: &str) -> Option<HeaderValue> {
    let bad = |b: u8| b < 0x20 || b == 0x7f;
    if !subject.bytes().any(bad) {
        return HeaderValue::from_bytes(subject.as_bytes()).ok();
    }
    let mut v = Vec::with_capacity(subject.len() + 8);
    for b in subject.bytes() {
        if bad(b) {
            v.extend_from_slice(format!("\\{b:02X}").as_bytes());
        } else {
            v.push(b);
        }
    }
    HeaderValue::from_bytes(&v).ok()
}

impl Hooks for MtlsAuth {
    type State = ();
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        if !env.client_auth {
            c.error(
                &format!("{path}.name"),
                "mtls-auth needs server.tls.client_auth (a CA to verify client certificates \
                 with): without it no request could pass",
            );
        }
        let mut upstream_header = Vec::new();
        if let Some(h) = &cfg.upstream_header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => upstream_header.push(n),
                Err(_) => c.error(
                    &format!("{path}.config.upstream_header"),
                    format!("invalid header name {h:?}"),
                ),
            }
        }
        let mut subjects = Subjects::new();
        let mut sans = HashMap::new();
        for (ci, cons) in env.consumers.iter().enumerate() {
            for m in &cons.mtls_credentials {
                // Malformed entries and duplicates are reported by the consumers section.
                match m {
                    MtlsCredential::Subject { normal, .. } => subjects
                        .entry(subject_hash(normal))
                        .or_default()
                        .push((normal.clone(), ci)),
                    MtlsCredential::San(s) => {
                        sans.insert(s.clone(), ci);
                    }
                }
            }
        }
        Some(MtlsAuth {
            upstream_header,
            run_on_preflight: cfg.run_on_preflight,
            subjects,
            sans,
            counters: OnceLock::new(),
        })
    }

    fn identity_headers(&self) -> &[HeaderName] {
        &self.upstream_header
    }

    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        x.deferred_identity = Some("the client certificate's consumer");
        serde_json::json!({"result": "decided at request time (client certificate)"})
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && super::cors::is_cors_preflight(session.req_header()) {
            return Outcome::Continue;
        }
        let result = match &ctx.client_cert {
            None => Err(Verdict::NoCertificate),
            Some(cert) => self.identify(&cert.subject, &cert.sans),
        };
        match result {
            Ok(consumer) => {
                self.count(ctx, Verdict::Allowed);
                ctx.consumer = Some(consumer);
                Outcome::Continue
            }
            Err(v) => {
                self.count(ctx, v);
                // The serial finds the certificate; the certificate itself is never logged.
                tracing::debug!(
                    request_id = %ctx.request_id,
                    reason = ?v,
                    serial = ctx.client_cert.as_ref().map_or("", |c| c.serial.as_str()),
                    "mtls-auth refused"
                );
                Outcome::Respond(v.reply())
            }
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        super::send_consumer(req, ctx)?;
        if let (Some(name), Some(cert)) = (self.upstream_header.first(), &ctx.client_cert) {
            if let Some(v) = subject_header(&cert.subject).filter(|v| !v.is_empty()) {
                req.insert_header(name.clone(), v)?;
            }
        }
        Ok(())
    }

    /// Resolves each instance's counters for the routes it serves (a global entry serves
    /// several), so a request counts without a label lookup.
    fn install(rt: &Runtime, _registry: &Registry, instances: &[(&str, &Self)]) {
        let mut tables: Vec<(&Self, Vec<Option<Counters>>)> = Vec::new();
        for (route, inst) in instances {
            let Some(idx) = rt.routes.iter().position(|r| r.name == *route) else {
                continue;
            };
            let at = match tables.iter().position(|(p, _)| std::ptr::eq(*p, *inst)) {
                Some(at) => at,
                None => {
                    tables.push((inst, vec![None; rt.routes.len()]));
                    tables.len() - 1
                }
            };
            tables[at].1[idx] = Some(counters(route));
        }
        for (inst, table) in tables {
            // A snapshot is installed once; a second call would find the same handles.
            let _ = inst.counters.set(table.into_boxed_slice());
        }
    }

    fn register_metrics() {
        Lazy::force(&REQUESTS);
    }

    /// The three outcome series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        for o in OUTCOMES {
            if create {
                REQUESTS.with_label_values(&[route, o]);
            } else {
                let _ = REQUESTS.remove_label_values(&[route, o]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing;
    use crate::plugins::Plugin;
    use crate::tls::client_auth::ClientCert;
    use std::sync::Arc;

    fn runtime(consumers: &str, plugin: &str) -> Arc<Runtime> {
        let d = tempfile::tempdir().unwrap();
        let y = format!(
            "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    cert: {p}/s.crt\n    key: {p}/s.key\n    client_auth: {{ ca: {p}/ca.pem }}\nconsumers:\n{consumers}upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - {plugin}\n",
            p = d.path().display()
        );
        crate::demo::write_server_pki(d.path()).unwrap();
        let rt = crate::config::load_str(&y, d.path(), &Default::default(), &Default::default(), 1)
            .unwrap_or_else(|e| panic!("{e}"));
        Arc::new(rt)
    }

    fn cert(subject: &str, sans: &[&str]) -> Arc<ClientCert> {
        Arc::new(ClientCert {
            subject: subject.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            serial: "01".into(),
            not_after: 0,
        })
    }

    const CONSUMERS: &str = "  - username: partner-a\n    mtls_credentials: [{ subject: \"cn=partner-a, O=Acme\" }, { san: \"spiffe://acme/partner-a\" }]\n  - username: partner-b\n    mtls_credentials: [{ san: \"b.acme.example\" }]\n";

    #[test]
    fn subject_and_san_lookup() {
        let rt = runtime(CONSUMERS, "{ name: mtls-auth }");
        let Plugin::MtlsAuth(p) = &*rt.routes[0].plugins.plugins[0] else {
            panic!("mtls-auth");
        };
        assert_eq!(p.identify("CN=partner-a,O=Acme", &[]), Ok(0));
        assert_eq!(
            p.identify("CN=x", &["spiffe://acme/partner-a".into()]),
            Ok(0)
        );
        assert_eq!(
            p.identify("CN=partner-a,O=Acme", &["spiffe://acme/partner-a".into()]),
            Ok(0)
        );
        assert_eq!(p.identify("CN=x", &["b.acme.example".into()]), Ok(1));
        assert_eq!(
            p.identify("CN=partner-a,O=Acme", &["b.acme.example".into()]),
            Err(Verdict::Ambiguous)
        );
        assert_eq!(
            p.identify("CN=partner-a", &["B.acme.example".into()]),
            Err(Verdict::UnknownCertificate)
        );
        assert_eq!(p.identify("", &[]), Err(Verdict::UnknownCertificate));
    }

    #[tokio::test]
    async fn refusals_consumer_and_subject_header() {
        let rt = runtime(
            CONSUMERS,
            "{ name: mtls-auth, config: { upstream_header: X-Client-Subject } }",
        );
        let Plugin::MtlsAuth(p) = &*rt.routes[0].plugins.plugins[0] else {
            panic!("mtls-auth");
        };
        assert_eq!(p.identity_headers(), ["x-client-subject"]);
        let mut s = testing::session("GET / HTTP/1.1\nHost: x").await;
        let mut ctx = testing::ctx(&rt);
        let Outcome::Respond(r) = p.request(&mut s, &mut ctx).await else {
            panic!("no certificate passed");
        };
        assert_eq!(
            (r.status, r.code),
            (401, Some("missing_client_certificate"))
        );
        ctx.client_cert = Some(cert("CN=stranger", &[]));
        let Outcome::Respond(r) = p.request(&mut s, &mut ctx).await else {
            panic!("an unknown certificate passed");
        };
        assert_eq!(
            (r.status, r.code),
            (403, Some("unknown_client_certificate"))
        );
        ctx.client_cert = Some(cert("CN=partner-a,O=Acme", &[]));
        assert!(matches!(
            p.request(&mut s, &mut ctx).await,
            Outcome::Continue
        ));
        assert_eq!(ctx.consumer, Some(0));
        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        p.upstream_request(&mut up, &ctx).unwrap();
        assert_eq!(up.headers["x-consumer-username"], "partner-a");
        assert_eq!(up.headers["x-client-subject"], "CN=partner-a,O=Acme");
    }

    #[test]
    fn subject_header_escapes_control_characters() {
        assert_eq!(subject_header("CN=a,O=b").unwrap(), "CN=a,O=b");
        assert_eq!(subject_header("CN=a\nb").unwrap(), "CN=a\\0Ab");
        assert_eq!(
            subject_header("CN=caf\u{e9}").unwrap().as_bytes(),
            "CN=caf\u{e9}".as_bytes()
        );
    }
}
