//! DolphinScheduler's documented and tested results (its docs' "Built-in Parameter" page and
//! `TimePlaceholderUtilsTest`, schedule time 2022-08-26 00:00:00 in Asia/Shanghai as there), and
//! the errors `validate` reports.

use chrono_tz::Asia::Shanghai;

use super::*;

fn at() -> DateTime<Tz> {
    Shanghai.with_ymd_and_hms(2022, 8, 26, 0, 0, 0).single().expect("a valid time")
}

#[test]
fn dolphinschedulers_results_for_the_same_schedule_time() {
    let cases = [
        // built-ins
        ("${system.biz.date}", "20220825"),
        ("${system.biz.curdate}", "20220826"),
        ("${system.datetime}", "20220826000000"),
        // formats and offsets in days, hours and minutes
        ("$[yyyyMMdd]", "20220826"),
        ("$[yyyyMMdd-1]", "20220825"),
        ("$[yyyy-MM-dd+7]", "2022-09-02"),
        ("$[yyyyMMdd-7*2]", "20220812"),
        ("$[HHmmss-1/24]", "230000"),
        ("$[HHmmss+1/24/60]", "000100"),
        ("$[yyyy-MM-dd HH:mm:ss-1/24]", "2022-08-25 23:00:00"),
        // add_months
        ("$[add_months(yyyyMMdd,-1)]", "20220726"),
        ("$[add_months(yyyyMMdd,12*1)]", "20230826"),
        // business-attribute functions
        ("$[this_day(yyyy-MM-dd)]", "2022-08-26"),
        ("$[this_day(yyyyMMdd)]", "20220826"),
        ("$[last_day(yyyy-MM-dd)]", "2022-08-25"),
        ("$[last_day(yyyyMMdd)]", "20220825"),
        ("$[year_week(yyyy-MM-dd)]", "2022-34"),
        ("$[year_week(yyyyMMdd)]", "202234"),
        ("$[year_week(yyyy-MM-dd,5)]", "2022-35"),
        ("$[year_week(yyyyMMdd,5)]", "202235"),
        ("$[month_first_day(yyyy-MM-dd,-1)]", "2022-07-01"),
        ("$[month_first_day(yyyyMMdd,-1)]", "20220701"),
        ("$[month_last_day(yyyy-MM-dd,-1)]", "2022-07-31"),
        ("$[month_last_day(yyyyMMdd,-1)]", "20220731"),
        ("$[week_first_day(yyyy-MM-dd,0)]", "2022-08-22"),
        ("$[week_first_day(yyyyMMdd,0)]", "20220822"),
        ("$[week_first_day(yyyy-MM-dd,-1)]", "2022-08-15"),
        ("$[week_last_day(yyyy-MM-dd,0)]", "2022-08-28"),
        ("$[week_last_day(yyyyMMdd,0)]", "20220828"),
        ("$[week_last_day(yyyy-MM-dd,-1)]", "2022-08-21"),
        // several in one text, literals, and the offset functions
        (
            "$[yyyy]test1$[yyyy:***]$[yyyy-MM-dd-1],$[month_begin(yyyyMMdd, 1)],$[month_end(yyyyMMdd, -1)],$[week_begin(yyyyMMdd, 1)],$[week_end(yyyyMMdd, -1)]",
            "2022test12022:***2022-08-25,20220802,20220830,20220823,20220827",
        ),
        // epoch times (of the schedule time in its zone)
        ("$[timestamp(yyyyMMddHHmmss)]", "1661443200"),
        ("$[timestamp(yyyyMMddHHmmss-1)]", "1661356800"),
        ("$[unixtime(yyyyMMddHHmmss-1)]", "1661356800"),
        ("$[milli_unixtime(yyyyMMddHHmmss-1)]", "1661356800000"),
        ("$[micro_unixtime(yyyyMMddHHmmss-1)]", "1661356800000000"),
        ("$[nano_unixtime(yyyyMMddHHmmss-1)]", "1661356800000000000"),
        ("$[unixtime(week_begin(yyyyMMddHHmmss, 1))]", "1661184000"),
        ("$[milli_unixtime(week_begin(yyyyMMddHHmmss, 1))]", "1661184000000"),
        // what is not a time expression is left alone
        ("echo ${day} $HOME", "echo ${day} $HOME"),
    ];
    assert!(cases.len() >= 20);
    for (text, want) in cases {
        assert_eq!(render(text, at()).as_deref(), Ok(want), "{text}");
    }
}

#[test]
fn year_week_counts_as_javas_calendar_across_new_year() {
    let on = |y, m, d| Shanghai.with_ymd_and_hms(y, m, d, 12, 0, 0).single().expect("a valid time");
    // 2021-01-01 is in the last week of 2020, printed with its own calendar year
    assert_eq!(render("$[year_week(yyyy-MM-dd)]", on(2021, 1, 1)).as_deref(), Ok("2021-53"));
    // 2024-12-31 is in week 1 of 2025
    assert_eq!(render("$[year_week(yyyy-MM-dd)]", on(2024, 12, 31)).as_deref(), Ok("2024-01"));
    assert_eq!(render("$[year_week(yyyyMMdd)]", on(2022, 1, 3)).as_deref(), Ok("202201"));
}

#[test]
fn bad_expressions_say_what_is_wrong() {
    let why = |text: &str| check(text).expect_err("invalid").why;
    assert_eq!(why("$[next_day(yyyyMMdd)]"), "unknown function next_day()");
    assert!(why("$[yyyyMMddQ]").contains("unsupported letter 'Q'"));
    assert!(why("$[1+2]").contains("not a time expression"), "bash arithmetic is not a date");
    assert!(why("${system.bogus}").contains("unknown built-in parameter"));
    assert!(why("$[yyyyMMdd").contains("no closing"));
    assert!(why("$[add_months(yyyyMMdd)]").contains("add_months needs a number of months"));
    assert!(why("$[timestamp(yyyyMMdd)]").contains("takes a yyyyMMddHHmmss expression"));
    assert!(check("echo $[yyyyMMdd-1] ${system.biz.date} ${day}").is_ok());
}
