//! Every shipped `conf/*.yaml` validates with `gatehouse -t`.
use crate::common;

use std::path::{Path, PathBuf};

use common::*;

/// Names of `${NAME}` references without a `:-default` in `text`.
fn required_env(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        if !inner.contains(":-")
            && !inner.is_empty()
            && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push(inner.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn conf_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml") | Some("yml")
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_conf_yaml_validates() {
    let files = conf_files();
    assert!(
        !files.is_empty(),
        "conf/ holds no *.yaml: the documented example config is missing"
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Secrets referenced without a default get dummy values, as an operator would set them.
        let vars: Vec<(String, String)> = required_env(&text)
            .into_iter()
            .map(|n| {
                let v = format!(
                    "golden-test-{}-0123456789abcdef0123456789abcdef",
                    n.to_lowercase()
                );
                (n, v)
            })
            .collect();
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // `gatehouse demo` writes its CA next to the demo config before loading it.
        let demo_dir = tempfile::tempdir().unwrap();
        let checked = if f.file_name().is_some_and(|n| n == "demo.yaml") {
            gatehouse::demo::write_pki(demo_dir.path()).unwrap();
            let copy = demo_dir.path().join("demo.yaml");
            std::fs::write(&copy, &text).unwrap();
            copy
        } else {
            f.clone()
        };
        let (code, stderr) = validate_file(&checked, &env, &[]);
        if code != 0 {
            failures.push(format!("{} (exit {code}):\n{stderr}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid shipped configs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn required_env_parser() {
    assert_eq!(
        required_env("a: ${X}\nb: ${Y:-d}\nc: \"${Z_1}\" ${X}"),
        vec!["X".to_string(), "Z_1".to_string()]
    );
}
