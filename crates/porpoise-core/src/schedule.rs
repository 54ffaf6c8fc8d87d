//! Schedules, free of I/O: a cron expression (parsed by `croner`: 5 or 6 fields, `L`, `W`, `#`,
//! nicknames) in an IANA time zone, an optional window, and what to do about fire times missed
//! while no master was up. Time is always an argument, so tests pin any instant, including the
//! daylight-saving changes (a local time that does not exist fires once at the next valid
//! instant; one that occurs twice fires once).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

/// What happens to fire times missed while no master was up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Skip them: the next run is at the next fire time.
    None,
    /// One run, for the last missed fire time.
    #[default]
    Latest,
    /// One run per missed fire time, oldest first.
    All,
}

impl Catchup {
    pub const ALL: [Catchup; 3] = [Catchup::None, Catchup::Latest, Catchup::All];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latest => "latest",
            Self::All => "all",
        }
    }
}

impl FromStr for Catchup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown catchup policy {s:?} (expected none, latest or all)"))
    }
}

impl fmt::Display for Catchup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schedule as written (in a spec's `schedule:` or by `porpoise schedule create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cron: String,
    /// An IANA time zone name; the cron expression is read in it.
    pub timezone: String,
    /// No fire time before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// No fire time after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    #[serde(default)]
    pub catchup: Catchup,
}

/// Which field of a schedule is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

/// The most fire times one plan fires; a longer backlog is worked off over several plans.
pub const MAX_FIRES_PER_PLAN: usize = 1000;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    cron: Cron,
    tz: Tz,
}

/// Parses a cron expression: 5 fields (minute first) or 6 (second first), with `L`, `W`, `#`,
/// names and nicknames (`@daily`).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let cron = Cron::from_str(expr.trim()).map_err(|e| format!("bad cron expression {expr:?}: {e}"))?;
    // an expression that never matches (February 30th) is as wrong as one that does not parse
    cron.find_next_occurrence(&Utc::now(), false).map_err(|e| format!("cron expression {expr:?} never fires: {e}"))?;
    Ok(cron)
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name)
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin or UTC)"))
}

/// Parses an instant: RFC 3339 (`2026-01-31T02:00:00Z`), or a local date or date and time
/// (`2026-01-31`, `2026-01-31 02:00`, `2026-01-31T02:00:00`) in time zone `tz` (the earliest
/// instant when the local time occurs twice, the next valid one when it does not occur).
pub fn parse_instant(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
        .ok_or_else(|| format!("bad time {text:?} (write 2026-01-31, 2026-01-31 02:00 or 2026-01-31T02:00:00Z)"))?;
    // a local time in a spring-forward gap is taken one hour later, as the clock reads then
    let resolved = tz
        .from_local_datetime(&local)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(local + chrono::Duration::hours(1))).earliest());
    resolved.map(|t| t.with_timezone(&Utc)).ok_or_else(|| format!("{text} does not exist in {tz}"))
}

/// What one look at a schedule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// The fire times to run, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Every fire time up to here is done with (fired or skipped).
    pub done_until: DateTime<Utc>,
    /// How many due fire times were skipped (missed, by the catchup policy).
    pub skipped: usize,
}

impl Schedule {
    /// Checks `spec`: the error names the field that is wrong.
    pub fn new(spec: ScheduleSpec) -> Result<Schedule, ScheduleError> {
        let cron = parse_cron(&spec.cron).map_err(|message| ScheduleError { field: "cron", message })?;
        let tz = parse_timezone(&spec.timezone).map_err(|message| ScheduleError { field: "timezone", message })?;
        if let (Some(start), Some(end)) = (spec.start, spec.end)
            && end < start
        {
            return Err(ScheduleError { field: "end", message: format!("end {end} is before start {start}") });
        }
        Ok(Schedule { spec, cron, tz })
    }

    /// The time zone the schedule is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn within(&self, t: DateTime<Utc>) -> bool {
        self.spec.start.is_none_or(|s| t >= s) && self.spec.end.is_none_or(|e| t <= e)
    }

    /// Up to `limit` fire times in `(after, until]`, oldest first. Fire times are whole
    /// seconds; in a repeated hour (fall back) each local time fires once, in its first pass.
    pub fn fire_times(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let until = self.spec.end.map_or(until, |end| end.min(until));
        // search from a whole second: nothing at or before `after`, nothing before the start
        let from = match self.spec.start {
            Some(start) if start > after => whole_second(start) - chrono::Duration::seconds(1),
            _ => whole_second(after),
        };
        let mut fires = Vec::new();
        let mut t = from.with_timezone(&self.tz);
        while fires.len() < limit {
            let Ok(next) = self.cron.find_next_occurrence(&t, false) else { break };
            let at = whole_second(next.with_timezone(&Utc));
            if at > until {
                break;
            }
            if at > after && self.within(at) {
                fires.push(at);
            }
            t = next;
        }
        fires
    }

    /// The first fire time after `after`, if the window has one.
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let far = self.spec.end.unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.fire_times(after, far, 1).into_iter().next()
    }

    /// What to fire at `now`, when every fire time up to `done_until` is done with. `missed`:
    /// no master was up across the fire times due now, so the catchup policy decides;
    /// otherwise every due fire time runs.
    pub fn plan(&self, done_until: DateTime<Utc>, now: DateTime<Utc>, missed: bool) -> FirePlan {
        let due = self.fire_times(done_until, now, MAX_FIRES_PER_PLAN);
        let more = due.len() == MAX_FIRES_PER_PLAN;
        let policy = if missed { self.spec.catchup } else { Catchup::All };
        match policy {
            // a backlog longer than one plan goes on from the last fire time fired
            Catchup::All => {
                let done_until = if more { due.last().copied().unwrap_or(now) } else { now };
                FirePlan { fire: due, done_until, skipped: 0 }
            }
            Catchup::Latest | Catchup::None => {
                let latest = if more {
                    // the last of a backlog longer than one plan, found from the other end
                    self.cron
                        .find_previous_occurrence(&now.with_timezone(&self.tz), true)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                        .filter(|t| *t > done_until && self.within(*t))
                } else {
                    due.last().copied()
                };
                let count = if more { MAX_FIRES_PER_PLAN } else { due.len() };
                let fire: Vec<DateTime<Utc>> = latest.filter(|_| policy == Catchup::Latest).into_iter().collect();
                FirePlan { skipped: count.saturating_sub(fire.len()), fire, done_until: now }
            }
        }
    }
}

/// `t` without its fraction of a second.
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests;
