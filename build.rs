//! Records the git commit the binary is built from, for `--version` and the
//! `pgbootfs_build_info` metric. Outside a git checkout (a source tarball) it says
//! "unknown" rather than failing the build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PGBOOTFS_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: a checkout changes HEAD, a commit the branch's ref.
    if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &r])
    {
        // A ref not stored loose lives in packed-refs; watching a missing file
        // would rerun this script on every build.
        let watch = if std::path::Path::new(&p).exists() {
            Some(p)
        } else {
            git(&["rev-parse", "--git-path", "packed-refs"])
        };
        if let Some(p) = watch.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
