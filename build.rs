//! Sets `GATEHOUSE_GIT_COMMIT` for `gatehouse --version`, `/status` and the `build_info`
//! metric: the short commit of the checkout being built, `GATEHOUSE_GIT_COMMIT` from the
//! environment when set (a source package built outside git can name its commit), or
//! "unknown".
//!
//! Rebuilds stay cheap: the script reruns only when HEAD moves (`.git/HEAD`, the branch ref it
//! points to, `packed-refs`) or the override changes, not on every source edit.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_GIT_COMMIT");
    let from_env = std::env::var("GATEHOUSE_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=GATEHOUSE_GIT_COMMIT={commit}");

    // `--git-path` resolves worktrees and the common dir; watch only files that exist (a
    // missing path would make cargo rerun the script on every build).
    let mut watch: Vec<String> = vec!["HEAD".into(), "packed-refs".into()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for name in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &name]) {
            let p = PathBuf::from(p);
            if p.is_file() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
