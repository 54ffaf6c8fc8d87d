//! Fire times: plain, across daylight-saving changes, in a window, and after downtime.

use chrono::TimeZone;

use super::*;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("a valid instant")
}

fn schedule(cron: &str, tz: &str, catchup: Catchup) -> Schedule {
    Schedule::new(ScheduleSpec { cron: cron.into(), timezone: tz.into(), start: None, end: None, catchup })
        .expect("a valid schedule")
}

#[test]
fn every_two_seconds_fires_on_even_seconds() {
    let s = schedule("*/2 * * * * *", "UTC", Catchup::Latest);
    let t0 = utc(2026, 1, 1, 0, 0, 0);
    assert_eq!(
        s.fire_times(t0, t0 + chrono::Duration::seconds(7), 100),
        [utc(2026, 1, 1, 0, 0, 2), utc(2026, 1, 1, 0, 0, 4), utc(2026, 1, 1, 0, 0, 6)],
        "after the start, up to and including the end"
    );
    assert_eq!(s.next_fire(t0), Some(utc(2026, 1, 1, 0, 0, 2)));
    // five fields: minute first
    let daily = schedule("30 2 * * *", "UTC", Catchup::Latest);
    assert_eq!(daily.next_fire(t0), Some(utc(2026, 1, 1, 2, 30, 0)));
}

#[test]
fn a_local_time_that_does_not_exist_fires_once_at_the_next_valid_instant() {
    // Europe/Berlin springs forward on 2026-03-29 from 02:00 CET to 03:00 CEST
    let s = schedule("0 30 2 * * *", "Europe/Berlin", Catchup::Latest);
    let fires = s.fire_times(utc(2026, 3, 27, 12, 0, 0), utc(2026, 3, 30, 12, 0, 0), 100);
    assert_eq!(
        fires,
        [
            utc(2026, 3, 28, 1, 30, 0), // 02:30 CET
            utc(2026, 3, 29, 1, 0, 0),  // 02:30 does not exist: 03:00 CEST
            utc(2026, 3, 30, 0, 30, 0), // 02:30 CEST
        ]
    );
}

#[test]
fn a_local_time_that_occurs_twice_fires_once() {
    // Europe/Berlin falls back on 2026-10-25 from 03:00 CEST to 02:00 CET: 02:30 happens twice
    let s = schedule("0 30 2 * * *", "Europe/Berlin", Catchup::Latest);
    let fires = s.fire_times(utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 26, 0, 0, 0), 100);
    assert_eq!(fires, [utc(2026, 10, 25, 0, 30, 0)], "the first 02:30 (CEST) only");
    // an hourly schedule fires each local hour once: the repeated 02:00 in its first pass
    let hourly = schedule("0 0 * * * *", "Europe/Berlin", Catchup::Latest);
    let day = hourly.fire_times(utc(2026, 10, 24, 21, 59, 0), utc(2026, 10, 25, 22, 59, 0), 100);
    assert_eq!(day.len(), 24, "each of the 24 local hours once: {day:?}");
    assert!(day.contains(&utc(2026, 10, 25, 0, 0, 0)) && !day.contains(&utc(2026, 10, 25, 1, 0, 0)), "{day:?}");
}

#[test]
fn fire_times_stay_in_the_window() {
    let spec = ScheduleSpec {
        cron: "0 0 * * * *".into(),
        timezone: "UTC".into(),
        start: Some(utc(2026, 1, 1, 3, 0, 0)),
        end: Some(utc(2026, 1, 1, 5, 0, 0)),
        catchup: Catchup::All,
    };
    let s = Schedule::new(spec).expect("valid");
    assert_eq!(
        s.fire_times(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 2, 0, 0, 0), 100),
        [utc(2026, 1, 1, 3, 0, 0), utc(2026, 1, 1, 4, 0, 0), utc(2026, 1, 1, 5, 0, 0)]
    );
    assert_eq!(s.next_fire(utc(2026, 1, 1, 5, 0, 0)), None, "the window is over");
}

#[test]
fn missed_fire_times_follow_the_catchup_policy() {
    let t0 = utc(2026, 1, 1, 0, 0, 0);
    let now = t0 + chrono::Duration::seconds(11); // 2, 4, 6, 8 and 10 are due
    let missed = |c| schedule("*/2 * * * * *", "UTC", c).plan(t0, now, true);
    let none = missed(Catchup::None);
    assert_eq!((none.fire.len(), none.skipped, none.done_until), (0, 5, now));
    let latest = missed(Catchup::Latest);
    assert_eq!((latest.fire.clone(), latest.skipped), (vec![utc(2026, 1, 1, 0, 0, 10)], 4));
    let all = missed(Catchup::All);
    assert_eq!(all.fire.len(), 5);
    assert_eq!(all.fire[0], utc(2026, 1, 1, 0, 0, 2), "oldest first");
    // a master that was up fires everything due, whatever the policy
    let normal = schedule("*/2 * * * * *", "UTC", Catchup::None).plan(t0, now, false);
    assert_eq!((normal.fire.len(), normal.done_until), (5, now));
    // nothing due: nothing to fire, and the plan moves on
    let quiet = schedule("0 0 0 1 1 *", "UTC", Catchup::Latest).plan(now, now + chrono::Duration::seconds(5), true);
    assert_eq!((quiet.fire.len(), quiet.skipped), (0, 0));
}

#[test]
fn a_backlog_longer_than_one_plan_is_worked_off_in_order() {
    let t0 = utc(2026, 1, 1, 0, 0, 0);
    let now = t0 + chrono::Duration::seconds(1500);
    let s = schedule("* * * * * *", "UTC", Catchup::All);
    let first = s.plan(t0, now, true);
    assert_eq!(first.fire.len(), MAX_FIRES_PER_PLAN);
    assert_eq!(first.done_until, t0 + chrono::Duration::seconds(1000));
    let second = s.plan(first.done_until, now, true);
    assert_eq!(second.fire.len(), 500);
    let latest = schedule("* * * * * *", "UTC", Catchup::Latest).plan(t0, now, true);
    assert_eq!(latest.fire, [now], "the real latest, beyond one plan's reach");
}

#[test]
fn errors_name_the_field() {
    let bad = |cron: &str, tz: &str| {
        Schedule::new(ScheduleSpec {
            cron: cron.into(),
            timezone: tz.into(),
            start: None,
            end: None,
            catchup: Catchup::Latest,
        })
        .expect_err("invalid")
    };
    assert_eq!(bad("every day", "UTC").field, "cron");
    assert_eq!(bad("0 0 30 2 *", "UTC").field, "cron", "February 30th never comes");
    let tz = bad("0 0 * * *", "Mars/Olympus");
    assert_eq!(tz.field, "timezone");
    assert!(tz.message.contains("unknown time zone \"Mars/Olympus\""), "{tz}");
    let window = Schedule::new(ScheduleSpec {
        cron: "0 0 * * *".into(),
        timezone: "UTC".into(),
        start: Some(utc(2026, 2, 1, 0, 0, 0)),
        end: Some(utc(2026, 1, 1, 0, 0, 0)),
        catchup: Catchup::Latest,
    })
    .expect_err("end before start");
    assert_eq!(window.field, "end");
    assert_eq!(
        "sometimes".parse::<Catchup>().expect_err("unknown"),
        "unknown catchup policy \"sometimes\" (expected none, latest or all)"
    );
}
