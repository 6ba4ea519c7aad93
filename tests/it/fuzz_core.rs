//! Fuzzing on stable Rust with bolero: runs as an ordinary `cargo test` (random and corpus
//! inputs, a bounded number of iterations); a long session under a real fuzzing engine is
//! `cargo bolero test --test it fuzz_core::<name>` (see README "Security model").
//!
//! - the config loader never panics on any YAML, and every error carries a line;
//! - the router never panics on any method/host/path, and a match is always a whole-segment
//!   prefix of the path.

use bolero::check;
use gatehouse::config;
use gatehouse::router::{self, HostPattern, Matcher, Router};
use gatehouse::upstream::StateRegistry;
use std::path::Path;

/// YAML lines assembled from a vocabulary: random bytes alone almost never get past the YAML
/// parser, lines of real keys at random indents reach the compile checks.
const LINES: &[&str] = &[
    "server:",
    "  listen: [\"127.0.0.1:18080\"]",
    "  threads: 0",
    "  max_body_bytes: 1tb",
    "  trusted_proxies: [\"10.0.0.0/33\", \"::1\"]",
    "  header_timeout: 5 parsecs",
    "admin:",
    "  listen: nowhere",
    "  token: ${GATEHOUSE_FUZZ_UNSET}",
    "upstreams:",
    "  - name: a",
    "  - name: a",
    "    balance: weighted",
    "    balance: ip_hash",
    "    targets: []",
    "    targets: [{addr: \"127.0.0.1:1\", weight: 0}]",
    "    targets: [{addr: \"127.0.0.1:2\", backup: true}]",
    "    health_check: { path: nope, interval: 0 }",
    "    passive: { max_fails: 0 }",
    "    retries: 99999999999999999999",
    "routes:",
    "  - name: r",
    "    paths: [\"/a\", \"/a/../b\", \"\", \"/\"]",
    "    hosts: [\"*.\", \"*.example.com\"]",
    "    headers: { \"bad header\": \"v\" }",
    "    methods: [GET, \"B@D\"]",
    "    upstream: a",
    "    upstream: missing",
    "    plugins:",
    "      - name: correlation-id",
    "      - name: ip-restriction",
    "        config: { allow: [\"x\"] }",
    "        config: 7",
    "      - name: nope",
    "plugins:",
    "  - name: security-headers",
    "    config: { headers: { \"X-A\": \"\\u0000\" } }",
    "tiers:",
    "  free: {}",
    "consumers:",
    "  - username: u",
    "    tier: gold",
    "- [",
    "  &a x",
    "  <<: *a",
    "'",
    "\t",
    "---",
];

/// Up to 40 lines of `vocab`, each picked and indented (0, 2 or 4 spaces) by one pair.
fn assemble(picks: &[(u8, u8)], vocab: &[&str]) -> String {
    let mut text = String::new();
    for (line, indent) in picks.iter().take(40) {
        text.push_str(&" ".repeat((*indent % 3) as usize * 2));
        text.push_str(vocab[*line as usize % vocab.len()]);
        text.push('\n');
    }
    text
}

#[test]
fn config_loader_never_panics_and_errors_carry_lines() {
    check!()
        .with_type::<Vec<(u8, u8)>>()
        .with_iterations(3000)
        .for_each(|picks| {
            let text = assemble(picks, LINES);
            if let Err(errs) = config::load_str(
                &text,
                Path::new("."),
                &StateRegistry::default(),
                &Default::default(),
                1,
            ) {
                assert!(!errs.0.is_empty());
                for e in &errs.0 {
                    assert!(
                        e.line.is_some(),
                        "error without a line: {e}\n--- input ---\n{text}"
                    );
                }
            }
        });
}

#[test]
fn config_loader_never_panics_on_raw_bytes() {
    check!().with_iterations(3000).for_each(|bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let _ = config::load_str(
            &text,
            Path::new("."),
            &StateRegistry::default(),
            &Default::default(),
            1,
        );
    });
}

#[test]
fn router_never_panics_and_matches_whole_segments() {
    let prefixes = ["/", "/api", "/api/v1/users", "/api/v1", "/a/b/c/d", "/x%2F"];
    let norm: Vec<Vec<String>> = prefixes
        .iter()
        .map(|p| vec![router::normalize_prefix(p).unwrap()])
        .collect();
    let matchers = [
        Matcher::default(),
        Matcher {
            hosts: vec![HostPattern::parse("*.example.com").unwrap()],
            ..Default::default()
        },
        Matcher {
            methods: vec![http::Method::POST],
            ..Default::default()
        },
    ];
    let r = Router::build(
        norm.iter()
            .enumerate()
            .map(|(i, p)| (i, p.as_slice(), &matchers[i % matchers.len()])),
    );
    check!()
        .with_type::<(String, String, u8)>()
        .with_iterations(5000)
        .for_each(|(path, host, m)| {
            let method = [http::Method::GET, http::Method::POST, http::Method::DELETE]
                [*m as usize % 3]
                .clone();
            let path = format!("/{path}");
            let _ = router::scan_path(&path);
            let _ = gatehouse::util::percent::normalize_percent(&path);
            let _ = router::host_without_port(host);
            if let Some(found) = r.find(&method, Some(host), &http::HeaderMap::new(), &path) {
                let prefix = &norm[found.route][0];
                if prefix != "/" {
                    assert!(path.starts_with(prefix.as_str()), "{path} !~ {prefix}");
                    let rest = &path[prefix.len()..];
                    assert!(
                        rest.is_empty() || rest.starts_with('/'),
                        "not a segment boundary: {path} / {prefix}"
                    );
                }
                let stripped = router::strip_prefix(&path, found.prefix_len);
                assert!(stripped.starts_with('/'));
            }
        });
}

/// Kong declarative config lines for the `import kong` fuzz target: real keys at random
/// indents, with values of the wrong type, regex paths, odd hosts and unknown plugins.
const KONG_LINES: &[&str] = &[
    "_format_version: \"3.0\"",
    "_format_version: \"2.1\"",
    "_format_version: 7",
    "services:",
    "- name: s",
    "- name: s",
    "  url: http://127.0.0.1:18080/base",
    "  url: nope",
    "  url: grpcs://[::1]",
    "  host: u",
    "  port: 99999",
    "  protocol: tcp",
    "  retries: 99",
    "  connect_timeout: 0",
    "  routes:",
    "  - name: r",
    "  - paths: [/a, \"~/b/\\\\d+\", \"/x//y\", \"\", \"/v[0-9]\"]",
    "    hosts: [\"*.example.com\", \"a.*\", \"x:80\", \"..\"]",
    "    headers: { x-v: [\"1\", \"2\"], y: \"~*re\" }",
    "    methods: [get, \"B@D\"]",
    "    protocols: [https]",
    "    protocols: [tcp]",
    "    strip_path: 3",
    "  plugins:",
    "plugins:",
    "- name: key-auth",
    "  config: { key_names: [\"bad header\", apikey], key_in_query: false }",
    "- name: rate-limiting",
    "  config: { minute: 0, month: 5, policy: redis, redis_host: \"h h\", limit_by: header }",
    "  config: { second: 1.5, policy: redis, redis: { host: 127.0.0.1, password: \"p@ss\" } }",
    "- name: acl",
    "  config: { deny: [x] }",
    "- name: cors",
    "  config: { origins: [\"null\", \"*\"], credentials: true, max_age: -1 }",
    "- name: proxy-cache",
    "  config: { response_code: [99, 206, \"x\"], request_method: [] }",
    "- name: request-transformer",
    "  config: { add: { headers: [\"A:$(x)\", \"B:${Y}\"] }, append: 5 }",
    "- name: request-size-limiting",
    "  config: { allowed_payload_size: -3, size_unit: bytes }",
    "- name: ip-restriction",
    "  config: { allow: [\"10.0.0.0/33\"] }",
    "- name: correlation-id",
    "  config: { header_name: \"\" }",
    "- name: jwt",
    "  config: { secret_is_base64: true }",
    "  route: r",
    "  service: { name: s }",
    "  consumer: c",
    "  enabled: false",
    "upstreams:",
    "- name: u",
    "  algorithm: consistent-hashing",
    "  targets: [{ target: \"127.0.0.1:18081\", weight: 0 }, { target: \"127.0.0.1\" }, { target: 5 }]",
    "  healthchecks: { active: { healthy: { interval: 0.01 }, type: grpc }, passive: { unhealthy: { timeouts: 2 } } }",
    "consumers:",
    "- username: c",
    "- custom_id: c",
    "  keyauth_credentials: [{ key: k }, { key: k }, {}]",
    "  jwt_secrets: [{ key: j, secret: \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\" }, { algorithm: ES512 }]",
    "  acls: [{ group: g }, 5]",
    "routes:",
    "- service: s",
    "  paths: [/t]",
    "- [",
    "'",
    "---",
];

/// `import kong` never panics on any YAML, and whatever it converts is YAML the gateway's
/// loader accepts (every address in the vocabulary is a literal, so no DNS is involved).
#[test]
fn kong_import_never_panics_and_its_output_loads() {
    check!()
        .with_type::<Vec<(u8, u8)>>()
        .with_iterations(3000)
        .for_each(|picks| {
            let text = assemble(picks, KONG_LINES);
            if let Ok(conv) = gatehouse::import::kong::convert(&text, "fuzz.yml") {
                if let Err(errs) = config::load_str(
                    &conv.yaml,
                    Path::new("."),
                    &StateRegistry::default(),
                    &Default::default(),
                    1,
                ) {
                    panic!(
                        "converted config refused: {}\n--- kong ---\n{text}\n--- gatehouse ---\n{}",
                        errs.0
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                        conv.yaml
                    );
                }
            }
        });
}

#[test]
fn kong_import_never_panics_on_raw_bytes() {
    check!().with_iterations(3000).for_each(|bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let _ = gatehouse::import::kong::convert(&text, "fuzz.yml");
    });
}
