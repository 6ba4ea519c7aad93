//! `gatehouse -t`: broken configs exit 1 naming the YAML path and line of every error.
use crate::common;

use common::*;

/// 1-based number of the first line of fixture `file` containing `needle`.
fn line_of(file: &str, needle: &str) -> usize {
    line_of_nth(file, needle, 1)
}

/// 1-based number of the `nth` (1-based) line of fixture `file` containing `needle`.
fn line_of_nth(file: &str, needle: &str, nth: usize) -> usize {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth - 1)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in {file}"))
        .0
        + 1
}

/// Validate a bad fixture: exit 1 and a stderr line `PATH: ... (line N)` where N is the line
/// holding `needle`. Returns the stderr.
fn check(file: &str, path: &str, needle: &str) -> String {
    check_nth(file, path, needle, 1)
}

/// Like `check`, the line being the `nth` one containing `needle`.
fn check_nth(file: &str, path: &str, needle: &str, nth: usize) -> String {
    let f = format!("bad/{file}");
    let line = line_of_nth(&f, needle, nth);
    let (code, stderr) = validate_file(&fixture(&f), &[], &[]);
    assert_eq!(code, 1, "{f} must be rejected; stderr:\n{stderr}");
    assert_reported(&stderr, path, line);
    stderr
}

fn assert_reported(stderr: &str, path: &str, line: usize) {
    let want_path = format!("{path}:");
    let want_line = format!("(line {line})");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&want_path) && l.contains(&want_line)),
        "expected an error line with `{want_path}` and `{want_line}`; stderr:\n{stderr}"
    );
}

#[test]
fn valid_fixture_passes() {
    let (code, stderr) = validate_file(&fixture("good/valid.yaml"), &[], &[]);
    assert_eq!(code, 0, "valid config rejected:\n{stderr}");
}

#[test]
fn minimal_generated_config_passes() {
    let yaml = "upstreams:\n  - name: u\n    targets:\n      - { addr: \"127.0.0.1:9001\" }\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";
    let (code, stderr) = Gateway::validate(yaml);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unknown_upstream_in_route() {
    let err = check(
        "unknown_upstream.yaml",
        "routes[1].upstream",
        "upstream: productz",
    );
    assert!(err.contains("productz"), "{err}");
}

#[test]
fn duplicate_upstream_name() {
    // second `- name: users` is upstreams[1]
    let err = check_nth(
        "duplicate_upstream.yaml",
        "upstreams[1].name",
        "- name: users",
        2,
    );
    assert!(err.contains("users"), "{err}");
}

#[test]
fn duplicate_route_name() {
    // `- name: users` lines: upstreams[0], routes[0], routes[1]
    check_nth("duplicate_route.yaml", "routes[1].name", "- name: users", 3);
}

#[test]
fn empty_targets() {
    check("empty_targets.yaml", "upstreams[0].targets", "targets: []");
}

#[test]
fn weight_zero() {
    check(
        "weight_zero.yaml",
        "upstreams[0].targets[1].weight",
        "weight: 0",
    );
}

#[test]
fn unknown_plugin_name() {
    let err = check(
        "unknown_plugin.yaml",
        "routes[0].plugins[0].name",
        "key-auth-typo",
    );
    assert!(err.contains("key-auth-typo"), "{err}");
}

#[test]
fn unknown_key() {
    check("unknown_key.yaml", "routes[0].pathz", "pathz:");
}

#[test]
fn wrong_type() {
    check("wrong_type.yaml", "server.threads", "threads: many");
}

#[test]
fn bad_duration() {
    check(
        "bad_duration.yaml",
        "upstreams[0].health_check.interval",
        "5 parsecs",
    );
}

#[test]
fn bad_cidr() {
    check("bad_cidr.yaml", "server.trusted_proxies[1]", "300.1.2.0/33");
}

#[test]
fn unset_env_without_default() {
    let f = fixture("bad/unset_env.yaml");
    let line = line_of("bad/unset_env.yaml", "GATEHOUSE_IT_UNSET_VAR");
    let (code, stderr) = validate_file(&f, &[], &["GATEHOUSE_IT_UNSET_VAR"]);
    assert_eq!(code, 1, "{stderr}");
    assert_reported(&stderr, "admin.token", line);
    assert!(
        stderr.contains("GATEHOUSE_IT_UNSET_VAR"),
        "the message must name the variable: {stderr}"
    );

    // the same file is valid once the variable is set
    let (code, stderr) = validate_file(&f, &[("GATEHOUSE_IT_UNSET_VAR", "tok")], &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn env_default_is_used() {
    let yaml = "admin:\n  listen: 127.0.0.1:19901\n  token: ${GATEHOUSE_IT_SURELY_UNSET:-fallback}\nupstreams:\n  - name: u\n    targets:\n      - { addr: \"${GATEHOUSE_IT_ADDR_UNSET:-127.0.0.1:9001}\" }\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";
    let (code, stderr) = Gateway::validate(yaml);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn secret_never_in_errors() {
    const SECRET: &str = "s3cr3t-VALUE-d0-not-print-8d1f";
    let f = "bad/secret_with_error.yaml";
    let line = line_of(f, "upstream: userz");
    let (code, stderr) = validate_file(&fixture(f), &[("SECRET_FOR_TEST", SECRET)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_reported(&stderr, "routes[0].upstream", line);
    assert!(
        !stderr.contains(SECRET),
        "secret leaked to stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("s3cr3t"),
        "secret leaked to stderr:\n{stderr}"
    );
}

#[test]
fn every_error_is_reported() {
    let f = "bad/two_errors.yaml";
    let (code, stderr) = validate_file(&fixture(f), &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_reported(&stderr, "routes[0].upstream", line_of(f, "upstream: userz"));
    assert_reported(
        &stderr,
        "routes[1].upstream",
        line_of(f, "upstream: orderz"),
    );
}

#[test]
fn every_bad_fixture_is_rejected() {
    let dir = fixture("bad");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let (code, stderr) =
            validate_file(&p, &[("SECRET_FOR_TEST", "x")], &["GATEHOUSE_IT_UNSET_VAR"]);
        assert_eq!(code, 1, "{} accepted:\n{stderr}", p.display());
        assert!(
            stderr.contains("(line "),
            "{}: errors must carry a line: {stderr}",
            p.display()
        );
    }
    assert!(n >= 12, "fixtures missing: {n}");
}

#[test]
fn a_taken_listen_address_exits_at_once_naming_it() {
    // Pingora would panic in its service thread after retrying for seconds and leave a
    // process that serves nothing; the gateway refuses to start instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("g.yaml");
    std::fs::write(
        &conf,
        format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  pid_file: {d}/g.pid\n  upgrade_sock: {d}/g.sock\nadmin:\n  listen: 127.0.0.1:{admin}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n",
            d = dir.path().display(),
            admin = free_port()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the gateway kept running with its listen address taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "server.listen[0]: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    drop(taken);
}

/// `Gateway::validate` on an inline config: (exit code, stderr).
fn validate_inline(yaml: &str) -> (i32, String) {
    Gateway::validate(yaml)
}

const ROUTE: &str = "routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";

#[test]
fn grace_period_is_a_duration_like_every_other() {
    for v in ["30s", "\"30s\"", "2m", "30", "0"] {
        let yaml = format!(
            "server:\n  grace_period: {v}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9001\" }}]\n{ROUTE}"
        );
        let (code, stderr) = validate_inline(&yaml);
        assert_eq!(code, 0, "grace_period: {v} rejected:\n{stderr}");
    }
    // Pingora counts it in whole seconds: a fraction is an error naming the line.
    let yaml = format!(
        "server:\n  grace_period: 1500ms\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9001\" }}]\n{ROUTE}"
    );
    let (code, stderr) = validate_inline(&yaml);
    assert_eq!(code, 1, "{stderr}");
    assert_reported(&stderr, "server.grace_period", 2);
    assert!(stderr.contains("whole number of seconds"), "{stderr}");
}

#[test]
fn unresolvable_target_is_reported_once_as_what_it_is() {
    let yaml = format!(
        "upstreams:\n  - name: u\n    targets:\n      - {{ addr: \"no-such-host.invalid:80\" }}\n      - {{ addr: \"127.0.0.1:9002\", backup: true }}\n{ROUTE}"
    );
    let (code, stderr) = validate_inline(&yaml);
    assert_eq!(code, 1, "{stderr}");
    assert_reported(&stderr, "upstreams[0].targets[0].addr", 4);
    assert!(
        !stderr.contains("not a backup"),
        "the target has backup: false; only its address is wrong:\n{stderr}"
    );
    // A list of backups only is still refused.
    let yaml = format!(
        "upstreams:\n  - name: u\n    targets:\n      - {{ addr: \"127.0.0.1:9002\", backup: true }}\n{ROUTE}"
    );
    let (code, stderr) = validate_inline(&yaml);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("needs at least one target that is not a backup"),
        "{stderr}"
    );
}

#[test]
fn a_url_as_target_address_says_so() {
    for url in ["https://api.example.com:443", "http://127.0.0.1:9001"] {
        let yaml = format!(
            "upstreams:\n  - name: u\n    targets:\n      - {{ addr: \"{url}\" }}\n{ROUTE}"
        );
        let (code, stderr) = validate_inline(&yaml);
        assert_eq!(code, 1, "{url} accepted:\n{stderr}");
        assert_reported(&stderr, "upstreams[0].targets[0].addr", 4);
        assert!(
            stderr.contains("is a URL, not an address") && stderr.contains("host:port"),
            "{url}: {stderr}"
        );
        assert!(
            !stderr.to_ascii_lowercase().contains("lookup") && !stderr.contains("not a backup"),
            "{url}: no DNS error, no follow-on error:\n{stderr}"
        );
    }
}
