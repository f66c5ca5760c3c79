"""Cron ticks agree with cronsim away from DST transitions, and keep our documented rule at them."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from taskwarren.cron import ALIASES, Cron
from taskwarren.errors import ConfigurationError

#: Compared with cronsim: steps, ranges, lists, names, the day-of-month/day-of-week rule, aliases.
EXPRESSIONS = [
    "* * * * *", "*/7 * * * *", "5/20 * * * *", "1-59/2 * * * *", "15-45/10 * * * *",
    "0,30 * * * *", "5 * * * *", "*/15 * * * *", "*/30 * * * *", "0 */3 * * *", "0 1/6 * * *",
    "*/5 1,2,3 * * *", "0-5 0 * * *", "59 1 * * *", "30 2 * * *", "0 2 * * *", "0 1-3 * * *",
    "45 23 * * *", "0 0 * * *",
    # weekdays, by number and by name, in any case; 7 is Sunday
    "0 9-17 * * mon-fri", "*/15 9-17 * * 1-5", "0 3 * * Mon-FRI", "0 0 * * sun", "0 0 * * 7",
    "0 0 * * */2", "10 3 * feb-apr 0,6", "0 12 * * sun,sat",
    # days of month and months
    "0 12 1 * *", "0 0 1,15 * *", "0 0 31 * *", "0 0 29 2 *", "0 6 15 jan,apr,jul,oct *",
    "7 7 7 7 *", "0 0 * JAN-MAR MON",
    # both day fields restricted: either matches; one starts with "*": both must match
    "30 4 1,15 * 5", "0 0 13 * fri", "0 0 1-7 * mon", "0 0 */10 * mon", "0 0 1 * */3",
    *ALIASES,
]

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]

#: Ticks this close to a change of UTC offset are left out of the comparison with cronsim:
#: there our documented DST rule deliberately differs from it (see test_dst_* below). The
#: wall times that differ lie within the gap or the repeated hour (an hour at most in these
#: zones), and cronsim can return a tick from the repeated hour that precedes its start.
NEAR_TRANSITION = timedelta(hours=3)

#: Ticks taken from each start, from us and from cronsim.
TICKS_PER_START = 20

EPOCH_2000 = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
EPOCH_2038 = int(datetime(2038, 1, 1, tzinfo=UTC).timestamp())


def utc(text: str) -> int:
    """Seconds since the epoch of a UTC time written ``2026-03-29 01:00``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def offset_s(zone: ZoneInfo, instant: int) -> float:
    offset = datetime.fromtimestamp(instant, zone).utcoffset()
    assert offset is not None
    return offset.total_seconds()


def near_transition(zone: ZoneInfo, instant: int) -> bool:
    """Whether the zone's UTC offset changes within NEAR_TRANSITION of ``instant``.

    Comparing the offsets at both ends of the window finds a change because these zones
    change offset at most twice a year, never twice within hours.
    """
    window = int(NEAR_TRANSITION.total_seconds())
    return offset_s(zone, instant - window) != offset_s(zone, instant + window)


def transitions(zone: ZoneInfo, start: int, end: int) -> list[int]:
    """Instants (to the half hour) at which the zone's offset changes, found with zoneinfo alone."""
    found: list[int] = []
    for hour in range(start, end, 6 * 3600):
        if offset_s(zone, hour) != offset_s(zone, hour + 6 * 3600):
            found.extend(t for t in range(hour, hour + 6 * 3600, 1800)
                         if offset_s(zone, t) != offset_s(zone, t + 1800))
    return found


@functools.cache
def starts(zone_name: str) -> list[int]:
    """Seeded-random start instants: anywhere in 2000-2037, and within hours of transitions."""
    rng = random.Random(f"taskwarren.cron {zone_name}")
    anywhere = [rng.randrange(EPOCH_2000, EPOCH_2038) for _ in range(6)]
    zone = ZoneInfo(zone_name)
    nearby = []
    if changes := transitions(zone, utc("2024-01-01 00:00"), utc("2028-01-01 00:00")):
        nearby = [rng.choice(changes) + rng.randrange(-6 * 3600, 6 * 3600) for _ in range(4)]
    return anywhere + nearby


def cronsim_ticks(expression: str, zone: ZoneInfo, after: int, count: int) -> list[int]:
    """cronsim's next ``count`` ticks after the instant ``after`` (it starts from an aware time)."""
    it = CronSim(ALIASES.get(expression, expression), datetime.fromtimestamp(after, zone))
    return [int(next(it).timestamp()) for _ in range(count)]


def our_ticks(cron: Cron, after: int, count: int) -> list[int]:
    ticks = []
    for _ in range(count):
        after = cron.next_after(after)
        ticks.append(after)
    return ticks


@pytest.mark.parametrize("zone_name", ZONES)
def test_ticks_agree_with_cronsim_away_from_dst_transitions(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    compared = left_out = 0
    for expression in EXPRESSIONS:
        cron = Cron(expression, zone_name)
        for start in starts(zone_name):
            ours = our_ticks(cron, start, TICKS_PER_START)
            theirs = cronsim_ticks(expression, zone, start, TICKS_PER_START)
            assert all(a < b for a, b in pairwise([start, *ours]))
            # Both lists cover the same span up to the earlier of their last ticks.
            horizon = min(ours[-1], theirs[-1])
            ours_kept = [t for t in ours if t <= horizon and not near_transition(zone, t)]
            theirs_kept = [t for t in theirs if t <= horizon and not near_transition(zone, t)]
            assert ours_kept == theirs_kept, (expression, zone_name, start)
            compared += len(ours_kept)
            left_out += sum(1 for t in ours if t <= horizon) - len(ours_kept)
    # The comparison must not be hollowed out by what it leaves out.
    assert compared >= 0.8 * len(EXPRESSIONS) * len(starts(zone_name)) * TICKS_PER_START
    assert left_out <= 0.1 * compared
    if zone_name == "UTC":
        assert left_out == 0


# -- DST: hand-computed instants ---------------------------------------------------------------
# Europe/Berlin 2026: 03-29 01:00Z 02:00 CET -> 03:00 CEST; 10-25 01:00Z 03:00 CEST -> 02:00 CET.
# America/New_York 2026: 03-08 07:00Z 02:00 EST -> 03:00 EDT; 11-01 06:00Z 02:00 EDT -> 01:00 EST.
# Australia/Lord_Howe 2026: 04-04 15:00Z 02:00 (+11) -> 01:30 (+10:30);
#                           10-03 15:30Z 02:00 (+10:30) -> 02:30 (+11).
# America/Santiago 2026: 09-06 04:00Z 00:00 (-04) -> 01:00 (-03).
DST_CASES = [
    # spring forward: the missing wall time fires at the transition, once
    ("Europe/Berlin", "30 2 * * *", "2026-03-27 12:00",
     ["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"]),
    ("Europe/Berlin", "0 * * * *", "2026-03-28 23:30",
     ["2026-03-29 00:00", "2026-03-29 01:00", "2026-03-29 02:00"]),
    ("Europe/Berlin", "*/15 * * * *", "2026-03-29 00:30",
     ["2026-03-29 00:45", "2026-03-29 01:00", "2026-03-29 01:15"]),
    ("Europe/Berlin", "5 * * * *", "2026-03-28 23:30",  # 02:05 missing: at 03:00, then 03:05
     ["2026-03-29 00:05", "2026-03-29 01:00", "2026-03-29 01:05", "2026-03-29 02:05"]),
    ("Europe/Berlin", "0 */2 * * *", "2026-03-28 22:30",  # 02:00 missing: at 03:00
     ["2026-03-28 23:00", "2026-03-29 01:00", "2026-03-29 02:00"]),
    ("America/New_York", "30 2 * * *", "2026-03-06 12:00",
     ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"]),
    ("America/New_York", "0 * * * *", "2026-03-08 05:30",
     ["2026-03-08 06:00", "2026-03-08 07:00", "2026-03-08 08:00"]),
    ("America/New_York", "*/15 * * * *", "2026-03-08 06:30",
     ["2026-03-08 06:45", "2026-03-08 07:00", "2026-03-08 07:15"]),
    ("Australia/Lord_Howe", "*/30 * * * *", "2026-10-03 14:00",
     ["2026-10-03 14:30", "2026-10-03 15:00", "2026-10-03 15:30", "2026-10-03 16:00"]),
    ("Australia/Lord_Howe", "15 2 * * *", "2026-10-02 12:00",
     ["2026-10-02 15:45", "2026-10-03 15:30", "2026-10-04 15:15"]),
    ("America/Santiago", "0 0 * * *", "2026-09-04 12:00",
     ["2026-09-05 04:00", "2026-09-06 04:00", "2026-09-07 03:00"]),
    # fall back: the repeated wall time fires once, at its first occurrence
    ("Europe/Berlin", "30 2 * * *", "2026-10-23 12:00",
     ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"]),
    ("Europe/Berlin", "0 * * * *", "2026-10-24 23:30",
     ["2026-10-25 00:00", "2026-10-25 02:00", "2026-10-25 03:00"]),
    ("Europe/Berlin", "*/15 * * * *", "2026-10-25 00:30",
     ["2026-10-25 00:45", "2026-10-25 02:00", "2026-10-25 02:15"]),
    ("America/New_York", "30 1 * * *", "2026-10-30 12:00",
     ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"]),
    ("America/New_York", "0 * * * *", "2026-11-01 03:30",
     ["2026-11-01 04:00", "2026-11-01 05:00", "2026-11-01 07:00"]),
    ("America/New_York", "*/15 * * * *", "2026-11-01 05:30",
     ["2026-11-01 05:45", "2026-11-01 07:00", "2026-11-01 07:15"]),
    ("Australia/Lord_Howe", "*/30 * * * *", "2026-04-04 13:00",
     ["2026-04-04 13:30", "2026-04-04 14:00", "2026-04-04 14:30", "2026-04-04 15:30"]),
]


@pytest.mark.parametrize(("zone", "expression", "after", "expected"), DST_CASES)
def test_dst_transitions_fire_each_wall_time_once_at_the_documented_instant(
        zone: str, expression: str, after: str, expected: list[str]) -> None:
    ticks = list(Cron(expression, zone).ticks(utc(after), utc(expected[-1])))
    assert ticks == [utc(text) for text in expected]
    assert all(a < b for a, b in pairwise(ticks))


@pytest.mark.parametrize(("zone", "expression", "inside", "expected"), [
    # after 02:10 CET, the second 02:10: 02:30 has fired already, at 02:30 CEST
    ("Europe/Berlin", "30 2 * * *", "2026-10-25 01:10", "2026-10-26 01:30"),
    ("Europe/Berlin", "*/15 * * * *", "2026-10-25 01:10", "2026-10-25 02:00"),
    ("Europe/Berlin", "0 3 * * *", "2026-10-25 01:10", "2026-10-25 02:00"),
    ("America/New_York", "45 1 * * *", "2026-11-01 06:50", "2026-11-02 06:45"),
    ("Australia/Lord_Howe", "45 1 * * *", "2026-04-04 15:10", "2026-04-05 15:15"),
])
def test_from_inside_a_repeated_hour_the_next_tick_is_after_it_not_in_the_past(
        zone: str, expression: str, inside: str, expected: str) -> None:
    assert Cron(expression, zone).next_after(utc(inside)) == utc(expected)


@pytest.mark.parametrize(("zone", "expression", "after", "ours", "cronsims"), [
    # Minute or hour starting with "*": cronsim steps in UTC, so it skips the missing 02:00...
    ("Europe/Berlin", "0 */2 * * *", "2026-03-28 23:30", ["2026-03-29 01:00", "2026-03-29 02:00"],
     ["2026-03-29 02:00", "2026-03-29 04:00"]),
    # ... and fires the repeated 02:00 twice.
    ("Europe/Berlin", "0 * * * *", "2026-10-24 23:30", ["2026-10-25 00:00", "2026-10-25 02:00"],
     ["2026-10-25 00:00", "2026-10-25 01:00"]),
    # Fixed times: cronsim steps in wall time, so from 02:10 CET it returns 02:30 CEST, the past.
    ("Europe/Berlin", "30 2 * * *", "2026-10-25 01:10", ["2026-10-26 01:30"],
     ["2026-10-25 00:30"]),
])
def test_we_differ_from_cronsim_only_where_the_dst_rule_says_so(
        zone: str, expression: str, after: str, ours: list[str], cronsims: list[str]) -> None:
    cron = Cron(expression, zone)
    assert our_ticks(cron, utc(after), len(ours)) == [utc(text) for text in ours]
    theirs = cronsim_ticks(expression, ZoneInfo(zone), utc(after), len(cronsims))
    assert theirs == [utc(text) for text in cronsims]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("0 25 * * *", "cron '0 25 * * *': hour 25 is out of range 0-23"),
    ("60 * * * *", "cron '60 * * * *': minute 60 is out of range 0-59"),
    ("0 0 0 * *", "cron '0 0 0 * *': day-of-month 0 is out of range 1-31"),
    ("0 0 * 13 *", "cron '0 0 * 13 *': month 13 is out of range 1-12"),
    ("0 0 * * 8", "cron '0 0 * * 8': day-of-week 8 is out of range 0-7"),
    ("0 0 * foo *", "cron '0 0 * foo *': month 'foo' is not a number or month name"),
    ("0 0 * * funday", "cron '0 0 * * funday': day-of-week 'funday' is not a number or"),
    ("x * * * *", "cron 'x * * * *': minute 'x' is not a number"),
    ("1,,2 * * * *", "cron '1,,2 * * * *': minute '' is not a number"),
    ("*/0 * * * *", "cron '*/0 * * * *': minute step '0' in '*/0' is not a number >= 1"),
    ("0 0 20-10 * *", "cron '0 0 20-10 * *': day-of-month range '20-10' runs backwards"),
    ("0 0 * * fri-mon", "cron '0 0 * * fri-mon': day-of-week range 'fri-mon' runs backwards"),
    ("0 0 L * *", "cron '0 0 L * *': day-of-month 'L' uses a non-standard extension"),
    ("0 0 15W * *", "cron '0 0 15W * *': day-of-month '15W' uses a non-standard extension"),
    ("0 0 LW * *", "cron '0 0 LW * *': day-of-month 'LW' uses a non-standard extension"),
    ("0 0 * * 5L", "cron '0 0 * * 5L': day-of-week '5L' uses a non-standard extension"),
    ("0 0 * * mon#2", "cron '0 0 * * mon#2': day-of-week 'mon#2' uses a non-standard extension"),
    ("0 0 ? * mon", "cron '0 0 ? * mon': day-of-month '?' uses a non-standard extension"),
    ("0 0 0 * * *", "cron '0 0 0 * * *': 6 fields: a seconds field is not supported"),
    ("0 0 * *", "cron '0 0 * *': 4 fields, expected 5: minute hour day-of-month month"),
    ("", "cron '': 0 fields, expected 5"),
    ("@reboot", "cron '@reboot': @reboot is not a schedule and is not supported"),
    ("@fortnightly", "cron '@fortnightly': unknown alias '@fortnightly' (known: @yearly,"),
    ("0 0 30 2 *", "cron '0 0 30 2 *' never fires"),
    ("0 0 31 4,6,9,11 *", "cron '0 0 31 4,6,9,11 *' never fires"),
])
def test_a_bad_expression_is_refused_with_one_line_naming_the_field_and_value(
        expression: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Cron(expression)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("zone", ["Europe/Berln", "", "../../etc/passwd", "/etc/localtime"])
def test_an_unknown_time_zone_is_refused_by_name(zone: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^unknown time zone '.*'$") as raised:
        Cron("0 0 * * *", zone)
    assert repr(zone) in str(raised.value)


def test_a_leap_day_schedule_is_accepted_and_waits_across_2100() -> None:
    cron = Cron("0 0 29 2 *")
    assert cron.next_after(utc("2026-01-01 00:00")) == utc("2028-02-29 00:00")
    assert cron.next_after(utc("2096-02-29 00:00")) == utc("2104-02-29 00:00")  # 2100: no leap


def test_rare_schedules_are_found_a_century_ahead() -> None:
    # How fast is for benchmarks; here, that a search over years lands where it should.
    yearly, leap = Cron("0 0 1 1 *"), Cron("0 0 29 2 *")
    for year in range(2001, 2101):
        assert yearly.next_after(utc(f"{year}-03-01 00:00")) == utc(f"{year + 1}-01-01 00:00")
        found = leap.next_after(utc(f"{year}-03-01 00:00"))
        assert datetime.fromtimestamp(found, UTC).strftime("%m-%d %H:%M") == "02-29 00:00"


def test_the_expression_is_kept_stripped_with_its_zone() -> None:
    cron = Cron("  @daily \n", "Europe/Berlin")
    assert (cron.expression, cron.tz) == ("@daily", "Europe/Berlin")
    assert Cron("0 0 * * *").tz == "UTC"


# -- ticks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expression", ["*/15 * * * *", "30 2 * * *", "0 * * * *", "@weekly"])
def test_ticks_are_exactly_the_repeated_next_after_in_the_window(
        zone: str, expression: str) -> None:
    cron = Cron(expression, zone)
    rng = random.Random(f"ticks {zone} {expression}")
    for after in [utc("2026-03-27 00:00"), utc("2026-10-23 00:00"), utc("2026-04-02 00:00"),
                  utc("2026-09-04 00:00"), rng.randrange(EPOCH_2000, EPOCH_2038)]:
        until = after + rng.randrange(3 * 86400, 10 * 86400)
        expected = []
        tick = cron.next_after(after)
        while tick <= until:
            expected.append(tick)
            tick = cron.next_after(tick)
        assert list(cron.ticks(after, until)) == expected
        assert expected  # every window above is long enough for a tick


def test_ticks_is_empty_when_nothing_is_due() -> None:
    yearly = Cron("0 0 1 1 *")
    new_year = utc("2026-01-01 00:00")
    assert list(yearly.ticks(new_year, new_year + 364 * 86400)) == []  # `after` is excluded
    assert list(yearly.ticks(new_year - 1, new_year - 1)) == []
    assert list(yearly.ticks(new_year, new_year - 86400)) == []
    assert list(yearly.ticks(new_year - 1, new_year)) == [new_year]  # `until` is included
