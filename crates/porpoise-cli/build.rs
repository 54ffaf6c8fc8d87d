//! Puts the git commit the binaries are built from into `PORPOISE_GIT_COMMIT`: the variable's
//! value when the build is given one (a Docker build has no .git), else git's, else "unknown".

fn main() {
    println!("cargo:rerun-if-env-changed=PORPOISE_GIT_COMMIT");
    // given (a Docker build has no .git), or asked of git
    let given = std::env::var("PORPOISE_GIT_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = given
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PORPOISE_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
}
