//! A spec from anywhere: the nesting pre-scan, the parser and the validator never panic, and a
//! spec that parses has a graph without cycles.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = porpoise_core::limits::too_deep(text, porpoise_core::limits::MAX_NESTING);
    if let Ok(spec) = porpoise_core::WorkflowSpec::parse("fuzz.yaml", text) {
        let dag = spec.dag();
        assert_eq!(dag.len(), spec.tasks.len());
    }
});
