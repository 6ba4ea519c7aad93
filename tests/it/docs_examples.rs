//! The YAML examples in README.md and docs/**/*.md are what users copy: every one must be
//! accepted by `gatehouse -t` exactly as printed.
//!
//! Convention for fenced blocks (the info string after the opening three backticks):
//!
//! | info string     | meaning                                   | checked here                     |
//! |-----------------|-------------------------------------------|----------------------------------|
//! | `yaml`          | a complete gatehouse config               | `gatehouse -t` exits 0           |
//! | `yaml invalid`  | a config shown for its error messages     | `gatehouse -t` exits 1           |
//! | `yaml fragment` | a part of a config, or another tool's YAML | parses as YAML                   |
//!
//! Any other `yaml …` or `yml` info string fails the test, so a block cannot escape the
//! check by a typo in its fence. Examples run in a directory holding the files they name
//! (`tls/server.crt`, `tls/server.key`, `keys/partner.pem`, `errors/maintenance.html`), with
//! the environment variables they reference set (see `EXAMPLE_ENV`).
use crate::auth_support;
use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

/// Values for the `${NAME}` references of the examples (secrets long enough for HS256).
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("MOBILE_API_KEY", "mk-docs-example-key"),
    ("OPS_PASSWORD", "docs-example-ops-password"),
    ("BILLING_HMAC_SECRET", "docs-example-billing-hmac-secret"),
    ("MOBILE_JWT_SECRET", "docs-example-secret-0123456789abcdef"),
    ("WEB_JWT_SECRET", "docs-example-secret-0123456789abcdef"),
    ("ADMIN_TOKEN", "docs-example-admin-token"),
    ("OTEL_TOKEN", "docs-example-otel-token"),
    ("REDIS_PASSWORD", "docs-example-redis-password"),
    (
        "INTROSPECTION_CLIENT_SECRET",
        "docs-example-introspection-secret",
    ),
];

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    info: String,
    body: String,
}

/// Fenced code blocks of a markdown text (fences may be indented, as in list items).
fn fenced_blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            // Drop the fence's indentation (list items), keep the rest.
            let cut = l.len() - l.trim_start().len();
            body.push_str(&l[cut.min(indent)..]);
            body.push('\n');
        }
        out.push(Block {
            file: file.to_string(),
            line: i + 1,
            info: info.trim().to_string(),
            body,
        });
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().and_then(|x| x.to_str()) == Some("md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn all_blocks() -> Vec<Block> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    markdown_files()
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let name = p.strip_prefix(root).unwrap().display().to_string();
            fenced_blocks(&name, &text)
        })
        .collect()
}

/// A directory with the files the examples refer to.
fn example_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    make_certs(dir.path());
    // The upstream TLS examples' CA and client certificate (any matching pair will do).
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    for (from, to) in [
        ("tls/ca.pem", "certs/internal-ca.pem"),
        ("tls/server.crt", "certs/gateway.pem"),
        ("tls/server.key", "certs/gateway.key"),
        // docs/tls.md's certificates chosen by SNI.
        ("tls/server.crt", "tls/api.example.com.crt"),
        ("tls/server.key", "tls/api.example.com.key"),
        ("tls/server.crt", "tls/wildcard.example.net.crt"),
        ("tls/server.key", "tls/wildcard.example.net.key"),
        // docs/tls.md's client certificates.
        ("tls/ca.pem", "tls/clients-ca.pem"),
    ] {
        std::fs::copy(dir.path().join(from), dir.path().join(to)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/partner.pem"),
        auth_support::rsa_pair().public_pem,
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("errors")).unwrap();
    std::fs::write(
        dir.path().join("errors/maintenance.html"),
        "<h1>Back soon</h1>\n",
    )
    .unwrap();
    dir
}

/// Checks every YAML block of `blocks` by the convention above; returns the failures.
fn check_blocks(blocks: &[Block], dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for (n, b) in blocks.iter().enumerate() {
        let lang = b.info.split_whitespace().next().unwrap_or("");
        if lang != "yaml" && lang != "yml" {
            continue;
        }
        let at = format!("{}:{} (```{})", b.file, b.line, b.info);
        let path = dir.join(format!("example-{n}.yaml"));
        // Examples name the production runtime directory, which `-t` checks exists and is
        // writable: it stands for a directory of the test's own.
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let body = b.body.replace("/run/gatehouse", &run.display().to_string());
        std::fs::write(&path, body).unwrap();
        match b.info.as_str() {
            "yaml" => {
                let (code, stderr) = validate_file(&path, EXAMPLE_ENV, &[]);
                if code != 0 {
                    failures.push(format!("{at}: gatehouse -t exit {code}\n{stderr}"));
                }
            }
            "yaml invalid" => {
                let (code, stderr) = validate_file(&path, EXAMPLE_ENV, &[]);
                if code != 1 || !stderr.contains("invalid configuration") {
                    failures.push(format!(
                        "{at}: marked invalid but gatehouse -t exit {code}\n{stderr}"
                    ));
                }
            }
            "yaml fragment" => {
                if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(&b.body) {
                    failures.push(format!("{at}: not YAML: {e}"));
                }
            }
            _ => failures.push(format!(
                "{at}: unknown fence; use ```yaml, ```yaml invalid or ```yaml fragment"
            )),
        }
    }
    failures
}

#[test]
fn every_yaml_example_in_the_docs_passes_gatehouse_t() {
    let blocks = all_blocks();
    let complete = blocks.iter().filter(|b| b.info == "yaml").count();
    assert!(
        complete >= 30,
        "only {complete} complete yaml examples found: is the extraction broken?"
    );
    let dir = example_dir();
    let failures = check_blocks(&blocks, dir.path());
    assert!(
        failures.is_empty(),
        "{} of the docs' YAML examples fail:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_plugin_page_has_a_complete_example_metrics_and_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for name in gatehouse::plugins::ORDER {
        let p = root.join(format!("docs/plugins/{name}.md"));
        let Ok(text) = std::fs::read_to_string(&p) else {
            missing.push(format!("{name}: no docs/plugins/{name}.md"));
            continue;
        };
        let blocks = fenced_blocks(name, &text);
        if !blocks
            .iter()
            .any(|b| b.info == "yaml" && b.body.contains(&format!("name: {name}")))
        {
            missing.push(format!(
                "{name}: no complete ```yaml example using the plugin"
            ));
        }
        for section in ["## Metrics", "## Errors"] {
            if !text.lines().any(|l| l.trim_end() == section) {
                missing.push(format!("{name}: no \"{section}\" section"));
            }
        }
    }
    assert!(missing.is_empty(), "plugin pages:\n{}", missing.join("\n"));
}

/// The check itself must catch a misspelt key, a missing file and a wrong fence.
#[test]
fn a_broken_example_is_reported() {
    let md = "\
```yaml
upstreams:
  - name: api
    targets: [{ addr: \"127.0.0.1:9001\" }]
routes:
  - name: api
    pathz: [\"/api\"]
    upstream: api
```

```yaml
server:
  tls: { listen: [\"127.0.0.1:8443\"], cert: tls/missing.crt, key: tls/server.key }
```

```yaml invalid
upstreams:
  - name: api
    targets: [{ addr: \"127.0.0.1:9001\" }]
```

```yml
a: 1
```
";
    let dir = example_dir();
    let failures = check_blocks(&fenced_blocks("test.md", md), dir.path());
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(failures[0].contains("test.md:1") && failures[0].contains("unknown field `pathz`"));
    assert!(failures[1].contains("test.md:11") && failures[1].contains("server.tls.cert"));
    assert!(failures[2].contains("marked invalid but gatehouse -t exit 0"));
    assert!(failures[3].contains("unknown fence"));
}

#[test]
fn the_load_test_config_validates() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/gatehouse.yaml");
    let (code, stderr) = validate_file(&p, &[], &[]);
    assert_eq!(code, 0, "loadtest/gatehouse.yaml:\n{stderr}");
}
