//! `gatehouse import kong`: Kong declarative configs (tests/fixtures/kong, written from Kong's
//! documented format) converted by the real binary, the output validated with `-t`, every
//! dropped part reported, and a converted config run against real backends.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kong")
        .join(name)
}

/// `gatehouse import kong FILE [extra args]`: (exit code, stdout, stderr).
fn import(file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("import")
        .arg("kong")
        .arg(file)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse import kong");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn validate_text(yaml: &str) -> (i32, String) {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("imported.yaml");
    std::fs::write(&p, yaml).unwrap();
    validate_file(&p, &[], &[])
}

#[test]
fn fixtures_convert_to_configs_that_validate_and_every_warning_is_in_the_output() {
    let dir = TempDir::new().unwrap();
    let rt = dir.path().join("roundtrip.yml");
    let text = std::fs::read_to_string(fixture("roundtrip.yml")).unwrap();
    std::fs::write(&rt, text.replace("BACKEND", "127.0.0.1:18099")).unwrap();
    for f in ["full-3.0.yml", "legacy-2.1.yml", "roundtrip.yml"] {
        let path = if f == "roundtrip.yml" {
            rt.clone()
        } else {
            fixture(f)
        };
        let (code, out, err) = import(&path, &[]);
        assert_eq!(code, 0, "{f}: {err}");
        let (vcode, verr) = validate_text(&out);
        assert_eq!(vcode, 0, "{f}: output does not validate: {verr}\n{out}");
        for w in err.lines() {
            let w = w
                .strip_prefix("warning: ")
                .unwrap_or_else(|| panic!("{f}: stderr line is not a warning: {w}"));
            assert!(
                out.contains(&format!("# kong: {w}")),
                "{f}: warning not in the output as a comment: {w}"
            );
        }
    }
}

#[test]
fn unsupported_parts_are_reported_never_dropped_silently() {
    let (code, out, err) = import(&fixture("full-3.0.yml"), &[]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "services[0].routes[0].paths[1]: regex path \"~/v1/orders/\\\\d+$\"",
        "services[3].protocol: \"tcp\" services cannot be expressed",
        "services[1].path: the service path \"/internal\"",
        "plugins[0]: prometheus is not a plugin in gatehouse",
        "plugins[2]: plugin \"rate-limiting\" scoped to a consumer",
        "bot-detection (User-Agent allow/deny patterns) cannot be expressed",
        "config.month: 100000 per month",
        "config.append: append",
        "Kong template values cannot be expressed",
        "consumers[1].jwt_secrets[1]: the HS256 secret is shorter than 32 bytes",
        "consumers[1].jwt_secrets[2]: RS256 key \"bob-rsa\"",
        "consumers[1].basicauth_credentials",
        "upstreams[0].targets[2]: weight 0",
        "config.status: 401 is not carried over",
        "config.origins: \"https://.*",
        "services[0].routes[1].protocols: https only",
    ] {
        assert!(err.contains(expected), "no warning {expected:?}:\n{err}");
    }
    // Secrets are carried into the config (they are needed) but never into a warning.
    for secret in [
        "s3cr3t-redis",
        "hunter2",
        "too-short",
        "alice-key-0123456789",
    ] {
        assert!(!err.contains(secret), "secret {secret:?} on stderr:\n{err}");
    }
    assert!(out.contains("alice-key-0123456789"));
    // Kong's defaults are written out (strip_path true, preserve_host false).
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    let routes = doc["routes"].as_sequence().unwrap();
    let admin = routes
        .iter()
        .find(|r| r["name"].as_str() == Some("orders-admin"))
        .unwrap();
    assert_eq!(admin["strip_path"].as_bool(), Some(true));
    assert_eq!(admin["preserve_host"].as_bool(), Some(false));
    assert_eq!(admin["headers"]["x-admin"].as_str(), Some("yes"));
    // A service plugin reaches each of the service's routes; weights keep their ratio.
    assert_eq!(
        admin["plugins"][0]["name"].as_str(),
        Some("correlation-id"),
        "{out}"
    );
    let ups = &doc["upstreams"][0];
    assert_eq!(ups["balance"].as_str(), Some("weighted"));
    assert_eq!(ups["targets"][0]["weight"].as_i64(), Some(2));
    assert_eq!(ups["targets"][1]["weight"].as_i64(), Some(1));
    assert_eq!(ups["health_check"]["path"].as_str(), Some("/health"));
    let rl = &routes[0]["plugins"][2]["config"];
    assert_eq!(rl["policy"].as_str(), Some("redis"));
    assert_eq!(rl["minute"].as_i64(), Some(60));
}

#[test]
fn output_file_and_bad_input_give_clear_answers() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("gw.yaml");
    let (code, stdout, err) = import(&fixture("legacy-2.1.yml"), &["-o", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.is_empty());
    assert!(err.contains("written from"), "{err}");
    assert!(std::fs::read_to_string(&out).unwrap().contains("routes:"));

    let cases: &[(&str, &str)] = &[
        ("not: [valid", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a map"),
        ("", "the file is empty"),
    ];
    for (text, msg) in cases {
        let p = dir.path().join("bad.yml");
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = import(&p, &[]);
        assert_eq!(code, 1, "{text:?}: {err}");
        assert!(err.contains(msg), "{text:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, _, err) = import(&dir.path().join("missing.yml"), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");

    // Wrong types in one entity: that entity is reported and left out, the rest converts.
    let p = dir.path().join("types.yml");
    std::fs::write(
        &p,
        "_format_version: \"3.0\"\nservices:\n  - name: a\n    url: http://127.0.0.1:1\n    routes: [{ name: r, paths: 7 }, { name: ok, paths: [/ok] }]\n  - 42\n",
    )
    .unwrap();
    let (code, out, err) = import(&p, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("services[0].routes[0]: cannot be read"),
        "{err}"
    );
    assert!(err.contains("services[1]: cannot be read"), "{err}");
    assert_eq!(validate_text(&out).0, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_config_behaves_as_the_kong_config_asked() {
    let backend = Backend::start("shop");
    let dir = TempDir::new().unwrap();
    let kong = std::fs::read_to_string(fixture("roundtrip.yml"))
        .unwrap()
        .replace("BACKEND", &backend.addr());
    let kong_path = dir.path().join("kong.yml");
    std::fs::write(&kong_path, kong).unwrap();
    let (code, out, err) = import(&kong_path, &[]);
    assert_eq!(code, 0, "{err}");
    let port = free_port();
    let admin = free_port();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  access_log: off\n  pid_file: gh.pid\n  upgrade_sock: gh.sock\nadmin:\n  listen: 127.0.0.1:{admin}\n{out}"
    );
    let gw = Gateway::start(&yaml);

    // key-auth: 401 without a key, 200 with one; strip_path; request-transformer header.
    let (s, body) = gw.get_with("/catalog/items/7", &[]).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(backend.hits(), 0);
    let (s, body) = gw
        .get_with("/catalog/items/7", &[("apikey", "alice-secret-key-1")])
        .await;
    assert_eq!(s, 200, "{body}");
    let seen = backend.last_request().unwrap();
    assert_eq!(seen.path, "/items/7", "strip_path: true (Kong's default)");
    assert_eq!(seen.header("x-from-kong"), Some("yes"));
    // Kong's query-string key works too.
    let (s, _) = gw.get_with("/catalog/x?apikey=bob-secret-key-2", &[]).await;
    assert_eq!(s, 200);

    // rate-limiting: 3 a minute per IP, then 429; strip_path false keeps the path.
    for i in 0..3 {
        let (s, body) = gw.get_with("/limited/a", &[]).await;
        assert_eq!(s, 200, "request {i}: {body}");
    }
    assert_eq!(backend.last_request().unwrap().path, "/limited/a");
    let (s, body) = gw.get_with("/limited/a", &[]).await;
    assert_eq!(s, 429, "{body}");

    // acl: bob is not in group staff (403), alice is (200).
    let (s, body) = gw
        .get_with("/staff", &[("apikey", "bob-secret-key-2")])
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = gw
        .get_with("/staff", &[("apikey", "alice-secret-key-1")])
        .await;
    assert_eq!(s, 200, "{body}");
    // preserve_host false (Kong's default): the upstream sees the target's address.
    assert_eq!(
        backend.last_request().unwrap().header("host"),
        Some(backend.addr().as_str())
    );
}

/// docs/import.md shows a Kong file and what `import kong` prints for it: both must stay true.
#[test]
fn the_documented_example_is_what_the_binary_prints() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/import.md"))
        .unwrap();
    let fence = |tag: &str| -> String {
        let start = doc.find(&format!("```{tag}\n")).unwrap() + tag.len() + 4;
        let end = doc[start..].find("```").unwrap();
        doc[start..start + end].to_string()
    };
    let dir = TempDir::new().unwrap();
    let kong = dir.path().join("kong.yml");
    std::fs::write(&kong, fence("yaml fragment")).unwrap();
    let (code, out, err) = import(&kong, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        fence("yaml"),
        "docs/import.md's output example is stale"
    );
    assert!(
        doc.contains(err.trim()),
        "docs/import.md's warning is stale: {err}"
    );
}
