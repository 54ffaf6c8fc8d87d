//! The text of commands and params: date-parameter expansion never panics, and the quoting of
//! `${name}` references is idempotent on its own output's shape (rewriting a rewritten command
//! only adds quotes, never drops text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = porpoise_core::dateparams::check(text);
    let rewritten = porpoise_core::shell::reference_params(text, |name| name.len() % 2 == 0);
    // only quotes are added: with them taken out, the text is what it was
    let strip = |s: &str| s.chars().filter(|c| !matches!(c, '"' | '\'' | '$')).collect::<String>();
    assert_eq!(strip(&rewritten), strip(text), "{text:?} became {rewritten:?}");
    let _ = porpoise_core::limits::check_params([(&text.to_string(), &text.to_string())]);
});
