//! The README's main job (`scripts/demo`): standalone starts, the examples apply, a run succeeds.

use std::process::Command;

#[test]
fn the_main_job_runs_a_workflow_in_standalone() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/demo"))
        .current_dir(&root)
        .env("PORPOISE_BIN", env!("CARGO_BIN_EXE_porpoise"))
        .env("PORPOISE_DEMO_PORT", porpoise_testkit::free_port().to_string())
        .output()
        .expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("applied: workflow daily-etl"), "{stdout}");
    assert!(stdout.contains("of daily-etl (version 1): success"), "{stdout}");
    assert!(stdout.contains("extract 2026-01-31"), "the first task's log is shown: {stdout}");
}
