//! How params reach a task's bash command as data, never as code.
//!
//! Each param is an environment variable of the task's process. `${name}` in the command is
//! rewritten into a reference to that variable which bash expands as one quoted word, whatever
//! quotes it stands in, so a value such as `$(rm -rf ~)` or `'; reboot` is only ever text:
//!
//! | where `${day}` stands          | becomes                   |
//! |--------------------------------|---------------------------|
//! | unquoted: `echo ${day}`        | `echo "${day}"`           |
//! | in double quotes: `"d=${day}"` | `"d=${day}"` (unchanged)  |
//! | in single quotes: `'${day}'`   | `''"${day}"''`            |
//! | in `$'…'`                      | `$''"${day}"$''`          |
//! | a heredoc, a comment, `\${day}`| unchanged                 |
//!
//! Were the context misread, the reference still only expands a variable: bash never parses a
//! variable's value as code (except where the command itself asks it to: `eval`, arithmetic).
//! A task's `raw_params` are the exception its author opts into: their text is pasted in.

/// Where the lexer is in the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Unquoted code: the top level, or inside `$( )` (with its open parentheses) or backticks.
    Code(Close),
    /// Inside `"…"`.
    Double,
    /// Inside `'…'`.
    Single,
    /// Inside `$'…'`.
    AnsiC,
    /// Inside `$(( ))`, with its open parentheses.
    Arith(u32),
    /// Inside `${…}` that is no param of ours; `quoted` when it stands in double quotes.
    Brace { quoted: bool },
}

/// What ends a [`Ctx::Code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The end of the command.
    End,
    /// The `)` that brings the open parentheses to 0.
    Paren(u32),
    /// A backtick.
    Backtick,
}

/// A heredoc whose body starts at the next line.
#[derive(Debug)]
struct Heredoc {
    delimiter: String,
    strip_tabs: bool,
}

/// `command` with each `${name}` for which `is_param(name)` holds rewritten into a quoted
/// reference to the environment variable `name` (see the module's table). Everything else is
/// left as written.
pub fn reference_params(command: &str, is_param: impl Fn(&str) -> bool) -> String {
    let b = command.as_bytes();
    let mut out = String::with_capacity(command.len() + 16);
    let mut stack = vec![Ctx::Code(Close::End)];
    let mut heredocs: Vec<Heredoc> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let ctx = *stack.last().unwrap_or(&Ctx::Code(Close::End));
        // a param reference, in any context but a comment or heredoc (handled below)
        if b[i] == b'$'
            && let Some((name, len)) = param_at(command, i)
            && is_param(name)
        {
            let reference = match ctx {
                Ctx::Code(_) | Ctx::Brace { quoted: false } => format!("\"${{{name}}}\""),
                Ctx::Double | Ctx::Arith(_) | Ctx::Brace { quoted: true } => format!("${{{name}}}"),
                Ctx::Single => format!("'\"${{{name}}}\"'"),
                Ctx::AnsiC => format!("'\"${{{name}}}\"$'"),
            };
            out.push_str(&reference);
            i += len;
            continue;
        }
        let c = b[i];
        // a backslash escapes the next character everywhere but in single quotes and arithmetic
        if c == b'\\' && !matches!(ctx, Ctx::Single | Ctx::Arith(_)) {
            i = copy(command, &mut out, i, 2);
            continue;
        }
        // `$((`, `$(`, `${` (and in code `$'`) open a context wherever `$` is special
        let quoted = match ctx {
            Ctx::Single | Ctx::AnsiC => None,
            Ctx::Code(_) => Some(false),
            Ctx::Double | Ctx::Arith(_) => Some(true),
            Ctx::Brace { quoted } => Some(quoted),
        };
        if c == b'$'
            && let Some(quoted) = quoted
            && let Some((opened, len)) = opening_at(b, i, quoted)
        {
            stack.push(opened);
            i = copy(command, &mut out, i, len);
            continue;
        }
        match ctx {
            Ctx::Single | Ctx::AnsiC => {
                if c == b'\'' {
                    stack.pop();
                }
            }
            Ctx::Double => match c {
                b'"' => {
                    stack.pop();
                }
                b'`' => stack.push(Ctx::Code(Close::Backtick)),
                _ => {}
            },
            Ctx::Arith(open) => match c {
                b'(' => set_top(&mut stack, Ctx::Arith(open + 1)),
                b')' if open == 0 && b.get(i + 1) == Some(&b')') => {
                    stack.pop();
                    i = copy(command, &mut out, i, 2);
                    continue;
                }
                b')' => set_top(&mut stack, Ctx::Arith(open.saturating_sub(1))),
                _ => {}
            },
            Ctx::Brace { quoted } => match c {
                b'}' => {
                    stack.pop();
                }
                b'\'' if !quoted => stack.push(Ctx::Single),
                b'"' if !quoted => stack.push(Ctx::Double),
                _ => {}
            },
            Ctx::Code(close) => match c {
                b'\'' => stack.push(Ctx::Single),
                b'"' => stack.push(Ctx::Double),
                b'`' if close == Close::Backtick => {
                    stack.pop();
                }
                b'`' => stack.push(Ctx::Code(Close::Backtick)),
                b'#' if word_starts(b, i) => {
                    // a comment, to the end of the line
                    let end = command[i..].find('\n').map_or(b.len(), |n| i + n);
                    i = copy(command, &mut out, i, end - i);
                    continue;
                }
                b'(' => {
                    if let Close::Paren(open) = close {
                        set_top(&mut stack, Ctx::Code(Close::Paren(open + 1)));
                    }
                }
                b')' => {
                    if let Close::Paren(open) = close {
                        if open <= 1 {
                            stack.pop();
                        } else {
                            set_top(&mut stack, Ctx::Code(Close::Paren(open - 1)));
                        }
                    }
                }
                b'<' if b.get(i + 1) == Some(&b'<') && b.get(i + 2) != Some(&b'<') => {
                    if let Some((heredoc, len)) = heredoc_at(command, i) {
                        heredocs.push(heredoc);
                        i = copy(command, &mut out, i, len);
                        continue;
                    }
                }
                b'\n' if !heredocs.is_empty() => {
                    out.push('\n');
                    i += 1;
                    for h in heredocs.drain(..) {
                        i = copy(command, &mut out, i, heredoc_body_len(&command[i..], &h));
                    }
                    continue;
                }
                _ => {}
            },
        }
        i = copy(command, &mut out, i, 1);
    }
    out
}

/// `command` with `${name}` replaced by the text of param `name`, for each of `raw` (a task's
/// `raw_params`) that has a value: the substitution its author asked for, as written.
pub fn paste_raw(command: &str, raw: &[String], value: impl Fn(&str) -> Option<String>) -> String {
    raw.iter().fold(command.to_string(), |text, name| match value(name) {
        Some(v) => text.replace(&format!("${{{name}}}"), &v),
        None => text,
    })
}

/// Copies `len` bytes of `command` from `i` (fewer at its end, and never splitting a character)
/// to `out`; returns the index after them.
fn copy(command: &str, out: &mut String, i: usize, len: usize) -> usize {
    let mut end = (i + len).min(command.len());
    while !command.is_char_boundary(end) {
        end += 1;
    }
    out.push_str(&command[i..end]);
    end
}

fn set_top(stack: &mut [Ctx], ctx: Ctx) {
    if let Some(top) = stack.last_mut() {
        *top = ctx;
    }
}

/// `${name}` at `i`, with `name` a param name: the name and the reference's length.
fn param_at(command: &str, i: usize) -> Option<(&str, usize)> {
    let rest = command[i..].strip_prefix("${")?;
    let end = rest.find('}')?;
    let name = &rest[..end];
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some((name, end + 3))
}

/// What a `$` at `i` opens (not a param of ours): `$((`, `$(`, `${`, or in code `$'`.
fn opening_at(b: &[u8], i: usize, quoted: bool) -> Option<(Ctx, usize)> {
    match (b.get(i + 1), b.get(i + 2)) {
        (Some(b'('), Some(b'(')) => Some((Ctx::Arith(0), 3)),
        (Some(b'('), _) => Some((Ctx::Code(Close::Paren(1)), 2)),
        (Some(b'{'), _) => Some((Ctx::Brace { quoted }, 2)),
        (Some(b'\''), _) if !quoted => Some((Ctx::AnsiC, 2)),
        _ => None,
    }
}

/// Whether the byte at `i` starts a word (so a `#` there starts a comment).
fn word_starts(b: &[u8], i: usize) -> bool {
    i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')')
}

/// A heredoc operator `<<WORD`, `<<-WORD`, `<<'WORD'`, `<<"WORD"` or `<<\WORD` at `i`.
fn heredoc_at(command: &str, i: usize) -> Option<(Heredoc, usize)> {
    let rest = &command[i + 2..];
    let (strip_tabs, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let trimmed = rest.trim_start_matches([' ', '\t']);
    let word_len = trimmed
        .find(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '<' | '>' | ')'))
        .unwrap_or(trimmed.len());
    let word = &trimmed[..word_len];
    let delimiter: String = word.chars().filter(|c| !matches!(c, '\'' | '"' | '\\')).collect();
    if delimiter.is_empty() {
        return None;
    }
    let len = command.len() - i - (trimmed.len() - word_len);
    Some((Heredoc { delimiter, strip_tabs }, len))
}

/// The length of a heredoc's body (its closing line included) at the start of `text`.
fn heredoc_body_len(text: &str, h: &Heredoc) -> usize {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        at += line.len();
        let content = line.strip_suffix('\n').unwrap_or(line);
        let content = if h.strip_tabs { content.trim_start_matches('\t') } else { content };
        if content == h.delimiter {
            return at;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(command: &str) -> String {
        reference_params(command, |n| matches!(n, "day" | "table"))
    }

    #[test]
    fn every_context_gets_a_quoted_reference() {
        let cases = [
            ("echo ${day}", r#"echo "${day}""#),
            (r#"echo "day=${day}""#, r#"echo "day=${day}""#),
            ("echo '${day}'", r#"echo ''"${day}"''"#),
            ("echo 'd=${day} ok'", r#"echo 'd='"${day}"' ok'"#),
            ("echo $'a\\'${day}'", r#"echo $'a\''"${day}"$''"#),
            ("echo ${day}${day}", r#"echo "${day}""${day}""#),
            ("x=${day}; echo $x", r#"x="${day}"; echo $x"#),
            (r#"echo "$(echo ${day})""#, r#"echo "$(echo "${day}")""#),
            ("echo $(echo $(echo ${day}) ${day})", r#"echo $(echo $(echo "${day}") "${day}")"#),
            ("echo `echo ${day}`", r#"echo `echo "${day}"`"#),
            (r#"echo "`echo ${day}`""#, r#"echo "`echo "${day}"`""#),
            ("echo ${other:-${day}}", r#"echo ${other:-"${day}"}"#),
            (r#"echo "${other:-${day}}""#, r#"echo "${other:-${day}}""#),
            ("echo $(( ${day} + 1 ))", "echo $(( ${day} + 1 ))"),
            ("case ${day} in (a) echo ${table};; esac", r#"case "${day}" in (a) echo "${table}";; esac"#),
        ];
        for (command, want) in cases {
            assert_eq!(refer(command), want, "{command}");
        }
    }

    #[test]
    fn escapes_comments_heredocs_and_other_names_are_left_alone() {
        let cases = [
            ("echo \\${day}", "echo \\${day}"),
            ("echo ${HOME} ${unknown} $day ${", "echo ${HOME} ${unknown} $day ${"),
            ("echo a # ${day}\necho ${day}", "echo a # ${day}\necho \"${day}\""),
            ("echo a#${day}", "echo a#\"${day}\""),
            ("cat <<EOF\n${day} '${day}'\nEOF\necho ${day}", "cat <<EOF\n${day} '${day}'\nEOF\necho \"${day}\""),
            ("cat <<'EOF' > f\n${day}\nEOF", "cat <<'EOF' > f\n${day}\nEOF"),
            ("cat <<-X\n\t${day}\n\tX\necho ${table}", "cat <<-X\n\t${day}\n\tX\necho \"${table}\""),
            ("echo $((1 << 2)) ${day}", "echo $((1 << 2)) \"${day}\""),
            ("echo «${day}»", "echo «\"${day}\"»"),
        ];
        for (command, want) in cases {
            assert_eq!(refer(command), want, "{command}");
        }
    }

    #[test]
    fn raw_params_are_pasted_as_written() {
        let raw = ["table".to_string()];
        let value = |n: &str| (n == "table").then(|| "a; b".to_string());
        assert_eq!(paste_raw("select * from ${table} -- ${day}", &raw, value), "select * from a; b -- ${day}");
    }

    /// The rewritten commands, run by bash with hostile values: each prints the value as text and
    /// runs none of it.
    #[test]
    fn hostile_values_stay_text_in_bash() {
        let dir = std::env::temp_dir().join(format!("porpoise-shell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let canary = dir.join("F");
        let values = [
            format!("$(touch {})", canary.display()),
            format!("`touch {}`", canary.display()),
            format!("'; touch {}; '", canary.display()),
            format!("\"; touch {}; \"", canary.display()),
            format!("a b\n touch {}", canary.display()),
            "*".to_string(),
        ];
        let commands = [
            "printf '%s|' ${day}",
            "printf '%s|' \"d=${day}\"",
            "printf '%s|' 'd=${day}'",
            "printf '%s|' $'d=${day}'",
            "printf '%s|' \"$(printf '%s' ${day})\"",
            "printf '%s|' \"`printf '%s' ${day}`\"",
            "printf '%s|' ${none:-${day}}",
            "x=${day}; printf '%s|' \"$x\"",
        ];
        for value in &values {
            for command in commands {
                let rewritten = refer(command);
                let out = std::process::Command::new("bash")
                    .arg("-c")
                    .arg(&rewritten)
                    .current_dir(&dir)
                    .env("day", value)
                    .output()
                    .expect("bash runs");
                let printed = String::from_utf8_lossy(&out.stdout);
                assert!(!canary.exists(), "{command} ran {value:?}: {rewritten}");
                assert!(printed.contains(value.as_str()), "{command} with {value:?} printed {printed:?}: {rewritten}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
