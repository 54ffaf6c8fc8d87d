//! Date parameters, as DolphinScheduler has them, computed from a run's schedule time in its
//! time zone: the built-ins `${system.biz.date}` (the day before, `yyyyMMdd`),
//! `${system.biz.curdate}` (`yyyyMMdd`) and `${system.datetime}` (`yyyyMMddHHmmss`), and the
//! time expressions `$[FORMAT]`, `$[FORMAT±DAYS]` (`N/24` hours, `N/24/60` minutes),
//! `$[add_months(FORMAT,N)]`, `$[this_day(F)]`, `$[last_day(F)]` (yesterday),
//! `$[year_week(F[,FIRST_WEEKDAY])]`, `$[month_first_day(F[,N])]`, `$[month_last_day(F[,N])]`,
//! `$[week_first_day(F[,N])]`, `$[week_last_day(F[,N])]`, `$[month_begin(F,DAYS)]`,
//! `$[month_end(F,DAYS)]`, `$[week_begin(F,DAYS)]`, `$[week_end(F,DAYS)]` and
//! `$[timestamp(yyyyMMddHHmmss…)]` (also `unixtime`, `milli_unixtime`, `micro_unixtime`,
//! `nano_unixtime`). FORMAT is a Java date pattern (`yyyy`, `yy`, `MM`, `dd`, `HH`, `mm`, `ss`,
//! `SSS`; other characters are copied). Nothing here reads a clock.

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;

/// The built-in date parameters.
pub const BUILTINS: [&str; 3] = ["system.biz.date", "system.biz.curdate", "system.datetime"];

/// A time expression or built-in that cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad time expression {expr:?}: {why}")]
pub struct ExprError {
    pub expr: String,
    pub why: String,
}

/// Checks every `$[...]` and `${system.…}` in `text` without computing it.
pub fn check(text: &str) -> Result<(), ExprError> {
    let at = chrono_tz::UTC
        .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .ok_or_else(|| ExprError { expr: text.to_string(), why: "no reference time".into() })?;
    render(text, at).map(|_| ())
}

/// `text` with every `$[...]` and built-in `${system.…}` computed for schedule time `at`;
/// anything else (`${name}` of a run param) is left as it is.
pub fn render(text: &str, at: DateTime<Tz>) -> Result<String, ExprError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = [rest.find("$["), rest.find("${system.")].into_iter().flatten().min();
        let Some(start) = next else { break };
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let close = if rest[start..].starts_with("$[") { ']' } else { '}' };
        let Some(end) = after.find(close) else {
            return Err(ExprError { expr: rest[start..].to_string(), why: format!("no closing {close:?}") });
        };
        let inner = &after[..end];
        if close == '}' {
            out.push_str(&builtin(inner, at)?);
        } else {
            out.push_str(&expression(inner, at).map_err(|why| ExprError { expr: format!("$[{inner}]"), why })?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of built-in `name` for schedule time `at`.
pub fn builtin(name: &str, at: DateTime<Tz>) -> Result<String, ExprError> {
    let f = |d: NaiveDateTime, pattern: &str| format(d, pattern).map_err(|why| ExprError { expr: name.into(), why });
    let local = at.naive_local();
    match name {
        "system.biz.date" => f(local - Duration::days(1), "yyyyMMdd"),
        "system.biz.curdate" => f(local, "yyyyMMdd"),
        "system.datetime" => f(local, "yyyyMMddHHmmss"),
        other => Err(ExprError {
            expr: format!("${{{other}}}"),
            why: format!("unknown built-in parameter (known: {})", BUILTINS.join(", ")),
        }),
    }
}

/// One `$[...]`'s value.
fn expression(expr: &str, at: DateTime<Tz>) -> Result<String, String> {
    let expr = expr.trim();
    if let Some((name, args)) = call(expr) {
        match name {
            // `mirco_unixtime`: DolphinScheduler's spelling
            "timestamp" | "unixtime" | "milli_unixtime" | "micro_unixtime" | "mirco_unixtime" | "nano_unixtime" => {
                let (t, pattern) = time_expression(args, at)?;
                if pattern != "yyyyMMddHHmmss" {
                    return Err(format!("{name} takes a yyyyMMddHHmmss expression, not {pattern:?}"));
                }
                let instant = at.timezone().from_local_datetime(&t.with_nanosecond(0).unwrap_or(t)).earliest();
                let instant = instant.ok_or_else(|| format!("{t} does not exist in {}", at.timezone()))?;
                let secs = i128::from(instant.timestamp());
                let scale: i128 = match name {
                    "milli_unixtime" => 1_000,
                    "micro_unixtime" | "mirco_unixtime" => 1_000_000,
                    "nano_unixtime" => 1_000_000_000,
                    _ => 1,
                };
                return Ok((secs * scale).to_string());
            }
            "year_week" => {
                let (pattern, first) = split_arg(args);
                let first = match first {
                    Some(n) => calculate(n)?,
                    None => 1,
                };
                format(at.naive_local(), pattern)?; // the pattern is checked like any other
                return Ok(year_week(at.naive_local(), pattern, first));
            }
            _ => {}
        }
    }
    let (t, pattern) = time_expression(expr, at)?;
    format(t, &pattern)
}

/// A time expression's local date and time and the pattern to format it with. Offsets in
/// minutes move the instant (as Java's `addMinutes` on a `Date`); days, weeks and months move
/// the local calendar (as `Calendar.add`).
fn time_expression(expr: &str, at: DateTime<Tz>) -> Result<(NaiveDateTime, String), String> {
    let expr = expr.trim();
    let Some((name, args)) = call(expr) else { return offset_in_minutes(expr, at) };
    let at = at.naive_local();
    let (pattern, arg) = split_arg(args);
    let n = || arg.map(calculate).transpose().map(|n| n.unwrap_or(0));
    let needs =
        |what: &str| arg.map(calculate).transpose()?.ok_or_else(|| format!("{name} needs {what}: {name}(FORMAT, N)"));
    let t = match name {
        "add_months" => add_months(at, needs("a number of months")?)?,
        "month_begin" => first_of_month(at) + Duration::days(needs("a number of days")?.into()),
        "month_end" => last_of_month(at)? + Duration::days(needs("a number of days")?.into()),
        "week_begin" => monday(at) + Duration::days(needs("a number of days")?.into()),
        "week_end" => sunday(at) + Duration::days(needs("a number of days")?.into()),
        "month_first_day" => add_months(first_of_month(at), n()?)?,
        "month_last_day" => last_of_month(add_months(at, n()?)?)?,
        "this_day" => at,
        "last_day" => at - Duration::days(1),
        "week_first_day" => monday(at) + Duration::weeks(n()?.into()),
        "week_last_day" => sunday(at) + Duration::weeks(n()?.into()),
        other => return Err(format!("unknown function {other}()")),
    };
    Ok((t, pattern.to_string()))
}

/// `name(args)` when `expr` is a function call.
fn call(expr: &str) -> Option<(&str, &str)> {
    let open = expr.find('(')?;
    let name = &expr[..open];
    let args = expr[open + 1..].strip_suffix(')')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some((name, args))
}

/// `FORMAT[,ARG]`.
fn split_arg(args: &str) -> (&str, Option<&str>) {
    match args.split_once(',') {
        Some((pattern, arg)) => (pattern.trim(), Some(arg.trim())),
        None => (args.trim(), None),
    }
}

/// `FORMAT`, `FORMAT+DAYS` or `FORMAT-DAYS` (DolphinScheduler's calcMinutes: the offset after
/// the last sign, in days, with `/24` and `/24/60` for hours and minutes, in whole minutes).
fn offset_in_minutes(expr: &str, at: DateTime<Tz>) -> Result<(NaiveDateTime, String), String> {
    if !expr.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err("not a time expression: it has no date pattern (yyyy, MM, dd, HH, mm, ss)".into());
    }
    let sign = if expr.contains('+') { '+' } else { '-' };
    if let Some(i) = expr.rfind(sign)
        && expr[i + 1..].starts_with(|c: char| c.is_ascii_digit())
    {
        let days = &expr[i + 1..];
        let minutes = match days.find('/') {
            None => calculate(&format!("60*24*({days})"))?,
            Some(slash) => calculate(&format!("60*24*({}){}", &days[..slash], &days[slash..]))?,
        };
        let minutes = if sign == '+' { minutes } else { -minutes };
        return Ok(((at + Duration::minutes(minutes.into())).naive_local(), expr[..i].to_string()));
    }
    Ok((at.naive_local(), expr.to_string()))
}

fn add_months(t: NaiveDateTime, n: i32) -> Result<NaiveDateTime, String> {
    let months = Months::new(n.unsigned_abs());
    let moved = if n >= 0 { t.checked_add_months(months) } else { t.checked_sub_months(months) };
    moved.ok_or_else(|| format!("{n} months from {t} is out of range"))
}

fn first_of_month(t: NaiveDateTime) -> NaiveDateTime {
    t - Duration::days(i64::from(t.day()) - 1)
}

fn last_of_month(t: NaiveDateTime) -> Result<NaiveDateTime, String> {
    let first = first_of_month(t);
    Ok(add_months(first, 1)? - Duration::days(1))
}

/// The Monday of `t`'s week (weeks start on Monday).
fn monday(t: NaiveDateTime) -> NaiveDateTime {
    t - Duration::days(i64::from(t.weekday().num_days_from_monday()))
}

/// The Sunday ending `t`'s week.
fn sunday(t: NaiveDateTime) -> NaiveDateTime {
    monday(t) + Duration::days(6)
}

/// Java's `Calendar` week of year, as DolphinScheduler prints it: weeks start on weekday
/// `first` (1 Monday … 7 Sunday), week 1 is the first with at least 4 days in the year, and the
/// year printed is the calendar year of the date (not the week's year).
fn year_week(t: NaiveDateTime, pattern: &str, first: i32) -> String {
    let first = match first {
        2 => Weekday::Tue,
        3 => Weekday::Wed,
        4 => Weekday::Thu,
        5 => Weekday::Fri,
        6 => Weekday::Sat,
        7 => Weekday::Sun,
        _ => Weekday::Mon,
    };
    let date = t.date();
    let week_start = |d: NaiveDate| d - Duration::days(i64::from(d.weekday().days_since(first)));
    let week_one = |year: i32| {
        let jan1 = NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or(date);
        let start = week_start(jan1);
        if (jan1 - start).num_days() <= 3 { start } else { start + Duration::days(7) }
    };
    let year = date.year();
    let week = if date >= week_one(year + 1) {
        1
    } else {
        let base = if date >= week_one(year) { week_one(year) } else { week_one(year - 1) };
        (week_start(date) - base).num_days() / 7 + 1
    };
    if pattern.contains('-') { format!("{year}-{week:02}") } else { format!("{year}{week:02}") }
}

/// Formats `t` with a Java date pattern: `yyyy`/`yy`, `MM`/`M`, `dd`/`d`, `HH`/`H`, `mm`/`m`,
/// `ss`/`s`, `SSS`; text in single quotes and non-letters are copied.
pub fn format(t: NaiveDateTime, pattern: &str) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..].iter().position(|&q| q == '\'').map(|p| i + 1 + p);
            let Some(end) = end else { return Err(format!("unclosed quote in date pattern {pattern:?}")) };
            out.extend(&chars[i + 1..end]);
            i = end + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let value = match c {
            'y' if run == 2 => format!("{:02}", t.year().rem_euclid(100)),
            'y' => format!("{:0run$}", t.year()),
            'M' => format!("{:0run$}", t.month()),
            'd' => format!("{:0run$}", t.day()),
            'H' => format!("{:0run$}", t.hour()),
            'm' => format!("{:0run$}", t.minute()),
            's' => format!("{:0run$}", t.second()),
            'S' => format!("{:0run$}", t.nanosecond() / 1_000_000),
            other => {
                return Err(format!(
                    "unsupported letter {other:?} in date pattern {pattern:?} (use yyyy, MM, dd, HH, mm, ss, SSS)"
                ));
            }
        };
        out.push_str(&value);
        i += run;
    }
    Ok(out)
}

/// Integer arithmetic as DolphinScheduler computes offsets: `+ - * /` and parentheses, unary
/// signs, division truncating toward zero.
pub fn calculate(expr: &str) -> Result<i32, String> {
    let tokens: Vec<char> = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let mut p = Arith { tokens: &tokens, pos: 0, expr };
    let value = p.sum()?;
    if p.pos != tokens.len() {
        return Err(format!("unexpected {:?} in {expr:?}", tokens[p.pos]));
    }
    i32::try_from(value).map_err(|_| format!("{expr:?} is out of range"))
}

struct Arith<'a> {
    tokens: &'a [char],
    pos: usize,
    expr: &'a str,
}

impl Arith<'_> {
    fn peek(&self) -> Option<char> {
        self.tokens.get(self.pos).copied()
    }

    fn sum(&mut self) -> Result<i64, String> {
        let mut v = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let r = self.product()?;
            v = if op == '+' { v.checked_add(r) } else { v.checked_sub(r) }.ok_or("overflow")?;
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<i64, String> {
        let mut v = self.unary()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let r = self.unary()?;
            v = match op {
                '*' => v.checked_mul(r).ok_or("overflow")?,
                _ if r == 0 => return Err(format!("division by zero in {:?}", self.expr)),
                _ => v / r,
            };
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<i64, String> {
        match self.peek() {
            Some('-') => {
                self.pos += 1;
                Ok(-self.unary()?)
            }
            Some('+') => {
                self.pos += 1;
                self.unary()
            }
            Some('(') => {
                self.pos += 1;
                let v = self.sum()?;
                if self.peek() != Some(')') {
                    return Err(format!("missing ')' in {:?}", self.expr));
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() => {
                let digits: String = self.tokens[self.pos..].iter().take_while(|c| c.is_ascii_digit()).collect();
                self.pos += digits.len();
                digits.parse().map_err(|_| format!("{digits} is out of range"))
            }
            other => Err(format!(
                "expected a number in {:?}, found {}",
                self.expr,
                other.map_or("the end".into(), |c| format!("{c:?}"))
            )),
        }
    }
}

#[cfg(test)]
mod tests;
