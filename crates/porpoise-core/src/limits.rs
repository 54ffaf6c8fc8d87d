//! Bounds on what users and peers send, checked before any costly work: a spec's size and
//! nesting (before the YAML parser sees it), a command's length and params' sizes (what one
//! `exec` can carry).

/// The largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The deepest nesting of collections a spec may have (real specs nest four or five deep).
pub const MAX_NESTING: usize = 64;

/// The most bytes one argument or environment string of `exec` may have, its final NUL
/// included (Linux's `MAX_ARG_STRLEN`, 32 pages).
pub const MAX_ARG_BYTES: usize = 131_072;

/// The most bytes a run's params may have together (`name=value` each), so that they and the
/// command fit in what `exec` takes at once (`ARG_MAX`, 2 MiB by default).
pub const MAX_PARAMS_BYTES: usize = 1 << 20;

/// Checks a run's params as they will reach a task's environment: each name (not reserved,
/// [`crate::spec::check_param_name`]) and their sizes against what one `exec` carries.
pub fn check_params<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    let mut total = 0;
    for (name, value) in params {
        crate::spec::check_param_name(name)?;
        // `name=value` and its NUL
        let bytes = name.len() + value.len() + 2;
        if bytes > MAX_ARG_BYTES {
            return Err(format!(
                "param {name} is {bytes} bytes; one environment string may have at most {MAX_ARG_BYTES} (128 KiB)"
            ));
        }
        total += bytes;
    }
    if total > MAX_PARAMS_BYTES {
        return Err(format!("the params are {total} bytes together; they may have at most {MAX_PARAMS_BYTES} (1 MiB)"));
    }
    Ok(())
}

/// Where a spec nests deeper than `max`: its 1-based line. `None` when it does not.
///
/// A scan of the text, not a parse: it counts block levels (indentation, and compact `- `
/// entries on one line) and flow levels (`[` and `{` where they open a collection), and skips
/// quoted scalars, block scalars (`|`, `>`) and comments. It is linear in the text, so a spec
/// nested 60,000 deep is refused in microseconds instead of costing the parser seconds.
pub fn too_deep(source: &str, max: usize) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    // the indentation of the line that opened a block scalar: deeper lines are its text
    let mut block_scalar: Option<usize> = None;
    for (n, line) in source.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if let Some(parent) = block_scalar {
            if content.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut rest = content;
        let mut block = indents.len();
        if quote.is_none() && flow == 0 {
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            block = indents.len();
            // compact entries: `- - - x` nests three deep on one line
            loop {
                let trimmed = rest.trim_start();
                match trimmed.strip_prefix("- ").or_else(|| trimmed.strip_prefix("? ")) {
                    Some(r) => {
                        block += 1;
                        rest = r;
                    }
                    None if trimmed == "-" || trimmed == "?" => {
                        block += 1;
                        rest = "";
                        break;
                    }
                    None => break,
                }
                if block > max {
                    return Some(n + 1);
                }
            }
            if block > max {
                return Some(n + 1);
            }
            rest = value_of(rest.trim_start());
            let token = rest.split(" #").next().unwrap_or("").trim();
            if is_block_scalar_indicator(token) {
                block_scalar = Some(indent);
                continue;
            }
            // only a collection or a quoted scalar at the value's start is more than text
            if !rest.starts_with(['[', '{', '\'', '"']) {
                continue;
            }
        }
        if scan_flow(rest, &mut flow, &mut quote, block, max) {
            return Some(n + 1);
        }
    }
    None
}

/// The value part of a block line: after `key: ` (a plain or quoted key), else the whole.
fn value_of(content: &str) -> &str {
    if content.starts_with(['\'', '"', '[', '{']) {
        // a quoted key is rare in specs; read the whole line as a value
        return content;
    }
    match content.find(": ") {
        Some(i) => content[i + 2..].trim_start(),
        None => content.strip_suffix(':').map_or(content, |_| ""),
    }
}

fn is_block_scalar_indicator(token: &str) -> bool {
    let mut chars = token.chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| matches!(c, '-' | '+' | '0'..='9'))
}

/// Scans `text` for flow collections and quoted scalars, carrying their state across lines;
/// `true` once `block` plus the flow depth exceeds `max`.
fn scan_flow(text: &str, flow: &mut usize, quote: &mut Option<char>, block: usize, max: usize) -> bool {
    let mut chars = text.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        match *quote {
            Some('\'') => {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        *quote = None;
                    }
                }
            }
            Some(_) => match c {
                '\\' => {
                    chars.next();
                }
                '"' => *quote = None,
                _ => {}
            },
            None => match c {
                '\'' | '"' if matches!(prev, ' ' | '[' | '{' | ',' | ':') => *quote = Some(c),
                '#' if prev == ' ' => return false,
                '[' | '{' => {
                    *flow += 1;
                    if block + *flow > max {
                        return true;
                    }
                }
                ']' | '}' => *flow = flow.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_found_at_its_line() {
        let flow = format!("name: x\ntasks: {}{}\n", "[".repeat(60_000), "]".repeat(60_000));
        assert_eq!(too_deep(&flow, MAX_NESTING), Some(2));
        let compact = format!("name: x\ntasks:\n  {}x\n", "- ".repeat(60_000));
        assert_eq!(too_deep(&compact, MAX_NESTING), Some(3));
        let mut indented = String::from("a:\n");
        for level in 1..=70 {
            indented.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        assert_eq!(too_deep(&indented, MAX_NESTING), Some(65));
        let flow_over_lines = format!("tasks: [\n{}\n{}\n]\n", "{".repeat(40), "[".repeat(40));
        assert_eq!(too_deep(&flow_over_lines, MAX_NESTING), Some(3));
    }

    #[test]
    fn text_that_only_looks_nested_is_not() {
        let spec = r#"name: ok
params: { day: "[[[[[[[[", other: '{{{{{{{{{{{{' }
tasks:
  - name: a
    command: test [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ x
  - name: b
    command: |
      [[ -f x ]] && { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { { echo; }
  - name: c
    command: "it's [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
      still [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ quoted"
  - { name: d, command: 'echo ''[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[''' }
    # a comment [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
"#;
        assert_eq!(too_deep(spec, MAX_NESTING), None);
        assert_eq!(too_deep(spec, 4), None, "a task in flow style nests four deep");
        assert_eq!(too_deep(spec, 3), Some(12));
        assert_eq!(too_deep(spec, 2), Some(4), "a task list entry nests three deep");
    }

    #[test]
    fn params_must_fit_an_exec() {
        let p = |pairs: &[(&str, usize)]| -> Vec<(String, String)> {
            pairs.iter().map(|(n, len)| (n.to_string(), "x".repeat(*len))).collect()
        };
        let check = |v: Vec<(String, String)>| check_params(v.iter().map(|(a, b)| (a, b)));
        assert!(check(p(&[("day", 10), ("big", MAX_ARG_BYTES - 5)])).is_ok());
        let e = check(p(&[("big", MAX_ARG_BYTES - 4)])).expect_err("one too many");
        assert!(e.contains("param big is 131073 bytes"), "{e}");
        let many: Vec<(String, usize)> = (0..10).map(|i| (format!("p{i}"), 120_000)).collect();
        let many: Vec<(&str, usize)> = many.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        let e = check(p(&many)).expect_err("too much together");
        assert!(e.contains("at most 1048576"), "{e}");
        let e = check(p(&[("BASH_ENV", 3)])).expect_err("reserved");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn every_example_is_well_within_the_limits() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for entry in std::fs::read_dir(&dir).expect("the examples") {
            let path = entry.expect("an example").path();
            let source = std::fs::read_to_string(&path).expect("readable");
            assert!(source.len() < MAX_SPEC_BYTES);
            assert_eq!(too_deep(&source, 8), None, "{}", path.display());
        }
    }
}
