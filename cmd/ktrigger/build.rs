//! Records the git commit the binary is built from, for `ktrigger version`: from
//! `KTRIGGER_GIT_COMMIT` when set (image builds without `.git`), else from git, else `unknown`.
//! On Linux with glibc it also links the binary with packed relative relocations (see
//! [`pack_relocations`]).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KTRIGGER_GIT_COMMIT");
    let commit = std::env::var("KTRIGGER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself, and the branch it points to.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        println!("cargo:rerun-if-changed={branch}");
    }
    println!("cargo:rustc-env=KTRIGGER_GIT_COMMIT={commit}");
    pack_relocations();
}

/// Links with `-z pack-relative-relocs` (DT_RELR, GNU ld 2.38 and glibc 2.36 onwards): the
/// loader then reads ~25 KB of relocations at start instead of ~1.7 MB, which stayed resident
/// for the life of the process. Only for glibc: the static musl build relocates itself with
/// the C library's start code, left as it is.
fn pack_relocations() {
    let target = |name: &str| std::env::var(name).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The trimmed output of a git command, or `None` when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}
