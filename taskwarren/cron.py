"""Cron schedules: five-field cron expressions whose ticks are wall-clock times in a time zone.

An expression is ``minute hour day-of-month month day-of-week``. A field is ``*``, a number,
a range ``a-b``, a list ``a,b,c``, or a step ``*/n``, ``a-b/n`` or ``a/n`` (``a`` through the
field's largest value, every ``n``). Months may be named ``jan``-``dec`` and weekdays
``sun``-``sat``, in any case, also in ranges (``mon-fri``); weekday 0 and 7 are both Sunday.
The aliases ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``)
and ``@hourly`` stand for their usual expressions. Refused, with an error naming the field:
the non-standard ``L``, ``W``, ``#`` and ``?``, a sixth (seconds) field, ``@reboot``, and an
expression that can never fire (``0 0 30 2 *``).

Day of month and day of week follow Vixie cron: when either field starts with ``*``, a day
must match both (so ``0 0 * * mon`` is every Monday and ``0 0 13 * *`` every 13th); when
neither does, a day matches when either matches (``0 0 13 * fri`` is every 13th and every
Friday).

Daylight saving time
--------------------
Ticks are wall-clock times in the schedule's zone; each fires at one UTC instant:

* A wall time that occurs twice (clocks fall back) fires once, at its first occurrence. In
  Europe/Berlin on 2026-10-25, ``30 2 * * *`` fires at 02:30 CEST (00:30Z) only, and
  ``0 * * * *`` fires at 02:00 CEST but not again at 02:00 CET.
* A wall time that does not occur (clocks spring forward) is not lost: it fires once, at the
  first instant after the gap, which is the instant of the transition. In Europe/Berlin on
  2026-03-29, ``30 2 * * *`` fires at 03:00 CEST (01:00Z).
* Ticks are instants, strictly increasing: ticks that land on the same instant fire once. In
  that gap, ``*/15 * * * *`` fires at 03:00 CEST once for 02:00, 02:15, 02:30, 02:45 and
  03:00; and ``5 * * * *`` fires at 03:00 CEST (for the missing 02:05) and again at 03:05.

So no wall time is fired twice, and none is skipped. The rule holds for any zone, including
those whose clocks move by 30 minutes (Australia/Lord_Howe) or at midnight (America/Santiago).
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taskwarren.errors import ConfigurationError

__all__ = ["Cron", "Every", "rule_of", "rule_text"]

#: What each alias stands for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: The Gregorian calendar repeats itself every 400 years (146,097 days, a whole number of
#: weeks), so a pattern of wall times that matches nothing in 400 years matches nothing ever.
#: A shorter horizon would be a guess: ``0 0 29 2 *`` skips 2100 and waits 8 years from 2096,
#: and ``0 0 */28 2 mon`` (Feb 1 or 29 that is a Monday) can wait 11.
CALENDAR_CYCLE_YEARS = 400

_MINUTE = timedelta(minutes=1)
_NUMBER = re.compile(r"[0-9]+")
#: Quartz-style extensions: last (``L``, ``5L``), weekday nearest (``15W``, ``LW``).
_EXTENSION = re.compile(r"[0-9]*L|[0-9]*W|LW", re.IGNORECASE)


class _Invalid(Exception):
    """A problem with one part of an expression; Cron adds the expression and re-raises."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i

    def value(self, text: str) -> int:
        if text.lower() in self.names:
            return self.low + self.names.index(text.lower())
        if not _NUMBER.fullmatch(text):
            kind = f"a number or {self.name} name" if self.names else "a number"
            raise _Invalid(f"{self.name} {text!r} is not {kind}")
        number = int(text)
        if not self.low <= number <= self.high:
            raise _Invalid(f"{self.name} {number} is out of range {self.low}-{self.high}")
        return number

    def parse(self, text: str) -> frozenset[int]:
        """The values one field of an expression stands for."""
        values: set[int] = set()
        for term in text.split(","):
            if "#" in term or "?" in term or _EXTENSION.fullmatch(term.partition("/")[0]):
                raise _Invalid(
                    f"{self.name} {term!r} uses a non-standard extension "
                    "(L, W, # and ? are not supported)"
                )
            values.update(self._term(term))
        return frozenset(values)

    def _term(self, term: str) -> range:
        base, slash, step_text = term.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) == 0:
                raise _Invalid(f"{self.name} step {step_text!r} in {term!r} is not a number >= 1")
            step = int(step_text)
        if base == "*":
            return range(self.low, self.high + 1, step)
        first_text, dash, last_text = base.partition("-")
        first = self.value(first_text)
        # "a/n" runs from a to the field's end; a lone "a" is just a.
        last = self.value(last_text) if dash else self.high if slash else first
        if last < first:
            raise _Invalid(f"{self.name} range {base!r} runs backwards")
        return range(first, last + 1, step)


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _WEEKDAYS),
)


def _fields(expression: str) -> list[str]:
    """The five fields of an expression, with an alias replaced by what it stands for."""
    if expression.startswith("@"):
        alias = expression.lower()
        if alias == "@reboot":
            raise _Invalid("@reboot is not a schedule and is not supported")
        if alias not in ALIASES:
            raise _Invalid(f"unknown alias {expression!r} (known: {', '.join(ALIASES)})")
        expression = ALIASES[alias]
    fields = expression.split()
    if len(fields) == 6:
        raise _Invalid("6 fields: a seconds field is not supported; ticks are whole minutes")
    if len(fields) != 5:
        raise _Invalid(
            f"{len(fields)} fields, expected 5: minute hour day-of-month month day-of-week"
        )
    return fields


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a key at all ("../x", "")
        raise ConfigurationError(f"unknown time zone {name!r}") from None


def _first_at_least(values: Sequence[int], floor: int) -> int | None:
    index = bisect_left(values, floor)
    return values[index] if index < len(values) else None


class Cron:
    """A five-field cron expression, read in a time zone.

    Its ticks are wall-clock times in the zone, fired by the rule in this module's docstring.

    Args:
        expression: five fields or an alias, as described in this module's docstring.
        tz: an IANA time zone name, such as ``"Europe/Berlin"``.

    Raises:
        ConfigurationError: the expression is malformed or never fires, or the zone is unknown.
    """

    expression: str
    tz: str

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        self.expression = expression.strip()
        self.tz = tz
        try:
            texts = _fields(self.expression)
            parsed = [field.parse(text) for field, text in zip(_FIELDS, texts, strict=True)]
        except _Invalid as problem:
            raise ConfigurationError(f"cron {self.expression!r}: {problem}") from None
        self._zone = _zone(tz)
        self._minutes = sorted(parsed[0])
        self._hours = sorted(parsed[1])
        self._months = sorted(parsed[3])
        self._dom = parsed[2]
        self._dow = frozenset(day % 7 for day in parsed[4])  # 7 is Sunday too
        # Vixie cron: a day field that starts with "*" narrows the other one (a day must match
        # both); when neither does, a day matches when either matches.
        self._both_days = texts[2].startswith("*") or texts[4].startswith("*")
        start = datetime(2000, 1, 1)
        if self._first_match(start, start.year + CALENDAR_CYCLE_YEARS - 1) is None:
            raise ConfigurationError(f"cron {self.expression!r} never fires")

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, tz={self.tz!r})"

    def next_after(self, instant: int) -> int:
        """The first tick strictly after ``instant``.

        Args:
            instant: whole seconds since the Unix epoch (UTC).

        Returns:
            The tick, in whole seconds since the Unix epoch (UTC).
        """
        # Wall time to instant (see _instant) never decreases, so no wall time up to the minute
        # of `instant` fires after it. Later ones may not either: in the second pass of a
        # repeated hour, they fired in the first pass; those are skipped.
        wall = self._wall(instant).replace(second=0) + _MINUTE
        while True:
            found = self._first_match(wall, wall.year + CALENDAR_CYCLE_YEARS)
            if found is None:  # pragma: no cover - __init__ proved every 400 years match
                raise AssertionError(f"{self!r} has no tick after {instant}")
            tick = self._instant(found)
            if tick > instant:
                return tick
            wall = found + _MINUTE

    def ticks(self, after: int, until: int) -> Iterator[int]:
        """Every tick ``t`` with ``after < t <= until``, in increasing order.

        Args:
            after: whole seconds since the Unix epoch (UTC), excluded.
            until: whole seconds since the Unix epoch (UTC), included.
        """
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)

    def _wall(self, instant: int) -> datetime:
        return datetime.fromtimestamp(instant, self._zone).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> int:
        """The instant at which wall time ``wall`` fires, by the DST rule."""
        # fold=0 reads a repeated wall time as its first occurrence.
        first = int(wall.replace(tzinfo=self._zone).timestamp())
        if self._wall(first) == wall:
            return first
        # `wall` is in a gap. Read with the offsets before and after the transition, it falls
        # either side of it; the transition is the first instant whose wall time is past `wall`.
        low, high = sorted((first, int(wall.replace(tzinfo=self._zone, fold=1).timestamp())))
        while high - low > 1:
            middle = (low + high) // 2
            if self._wall(middle) > wall:
                high = middle
            else:
                low = middle
        return high

    def _days(self, year: int, month: int) -> list[int]:
        """The days of a month that the day-of-month and day-of-week fields match."""
        monday_based, length = calendar.monthrange(year, month)
        first = (monday_based + 1) % 7  # cron counts weekdays from Sunday = 0
        if self._both_days:
            return [day for day in range(1, length + 1)
                    if day in self._dom and (first + day - 1) % 7 in self._dow]
        return [day for day in range(1, length + 1)
                if day in self._dom or (first + day - 1) % 7 in self._dow]

    def _first_match(self, start: datetime, last_year: int) -> datetime | None:
        """The first wall time at or after ``start`` (whole minutes) that the fields match.

        Skips field by field (a month, a day, an hour at a time), never minute by minute;
        None if nothing matches by the end of ``last_year``.
        """
        year, month, day = start.year, start.month, start.day
        hour, minute = start.hour, start.minute
        days_of, days = (0, 0), []  # the matching days of (year, month), made once a month
        while year <= last_year:
            found = _first_at_least(self._months, month)
            if found is None:
                year, month, day, hour, minute = year + 1, 1, 1, 0, 0
                continue
            if found != month:
                month, day, hour, minute = found, 1, 0, 0
            if days_of != (year, month):
                days_of, days = (year, month), self._days(year, month)
            found = _first_at_least(days, day)
            if found is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if found != day:
                day, hour, minute = found, 0, 0
            found = _first_at_least(self._hours, hour)
            if found is None:
                day, hour, minute = day + 1, 0, 0
                continue
            if found != hour:
                hour, minute = found, 0
            found = _first_at_least(self._minutes, minute)
            if found is None:
                hour, minute = hour + 1, 0
                continue
            return datetime(year, month, day, hour, found)
        return None


class Every:
    """Ticks every ``period_s`` seconds, aligned to the epoch: every scheduler, whenever
    it started, computes the same ones.

    Args:
        period_s: whole seconds, at least one.
    """

    def __init__(self, period_s: int) -> None:
        if period_s < 1:
            raise ConfigurationError("every= must be at least one second")
        self.period_s = period_s

    def __repr__(self) -> str:
        return f"Every({self.period_s})"

    def next_after(self, instant: int) -> int:
        """The first tick strictly after ``instant`` (seconds since the epoch)."""
        return (instant // self.period_s + 1) * self.period_s

    def ticks(self, after: int, until: int) -> Iterator[int]:
        """Every tick ``t`` with ``after < t <= until``, in order."""
        tick = self.next_after(after)
        while tick <= until:
            yield tick
            tick += self.period_s


def rule_text(rule: Cron | Every) -> str:
    """How ``rule`` is written in a stored schedule definition: ``cron <expression>
    <zone>`` or ``every <n>s`` (read back by :func:`rule_of`)."""
    if isinstance(rule, Every):
        return f"every {rule.period_s}s"
    return f"cron {rule.expression} {rule.tz}"


def rule_of(text: str) -> Cron | Every | None:
    """The rule a stored definition starts with (:func:`rule_text`), or ``None`` if it
    cannot be read (written by other code): the text up to the first ``;``."""
    head = text.split(";", 1)[0].strip()
    try:
        if head.startswith("every ") and head.endswith("s"):
            return Every(int(head[len("every "):-1]))
        if head.startswith("cron "):
            expression, _, zone = head[len("cron "):].rpartition(" ")
            return Cron(expression, zone)
    except (ConfigurationError, ValueError):
        return None
    return None
