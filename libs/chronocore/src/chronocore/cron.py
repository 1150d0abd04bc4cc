"""Cron expressions and time zones for recurring jobs: parsing with errors that say what
is wrong, the occurrences of a window, the next runs, and the expression in words.

The arithmetic is cronsim's, which follows Debian cron across daylight-saving changes:
- a job whose fixed time falls in the hour skipped in spring runs once, right after the
  jump (02:30 on the spring-forward night runs at 03:00);
- a job whose fixed time falls in the hour repeated in autumn runs once, the first time;
- a job with a wildcard hour (hourly, every minute) runs by the real elapsed time, so it
  has one run fewer in the skipped hour and the repeated hour's runs twice.
Expressions with a seconds field (6 fields) have no Debian counterpart and follow the
wall clock: a time in the skipped hour does not happen, one in the repeated hour runs
twice.

Expressions: 5 fields (minute first) or 6 (seconds first), names of months and weekdays,
``L`` and ``#``, and the aliases ``@yearly @annually @monthly @weekly @daily @midnight
@hourly``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from chronocore.model import ValidationError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_EXPRESSION_CHARS = 200
# Clock changes are at most two hours (Troll station); look this far around an instant.
DST_REACH_H = 3
# An expression must fire within this span to be accepted (leap days fire every 4 years,
# "the 30th of February" never).
FIRST_RUN_WITHIN = timedelta(days=366 * 8 + 2)


@dataclass(frozen=True)
class Schedule:
    """A validated cron expression in a time zone."""

    expression: str  # as the user wrote it
    timezone: str

    @property
    def _expanded(self) -> str:
        return ALIASES.get(self.expression.strip().lower(), self.expression)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def after(self, instant: datetime) -> Iterator[datetime]:
        """Occurrences strictly after ``instant``, in UTC."""
        # cronsim reads a start inside a repeated hour as its first pass; starting before
        # any nearby clock change and dropping what is not after the instant is exact.
        start = instant - self._margin(instant)
        for local in CronSim(self._expanded, start.astimezone(self.zone)):
            occurrence = local.astimezone(UTC)
            if occurrence > instant:
                yield occurrence

    def before(self, instant: datetime) -> Iterator[datetime]:
        """Occurrences strictly before ``instant``, latest first, in UTC."""
        start = instant + self._margin(instant)
        later = instant  # the last one yielded
        for local in CronSim(self._expanded, start.astimezone(self.zone), reverse=True):
            occurrence = local.astimezone(UTC)
            if occurrence >= instant:
                continue
            if self._margin(occurrence) or self._margin(later):
                # Walking back across a clock change that is not a whole hour (Lord
                # Howe's half hour), cronsim skips occurrences; walking forward it does
                # not: what lies between, forward, fills the gap.
                gap = []
                for between in self.after(occurrence):
                    if between >= later:
                        break
                    gap.append(between)
                yield from reversed(gap)
            yield occurrence
            later = occurrence

    def period_at(self, instant: datetime) -> timedelta:
        """The time between the latest two occurrences before ``instant``: the period a
        job is in, within which it is expected to run (across a weekend, for a weekday
        job, it is the weekend's)."""
        latest, previous = itertools.islice(self.before(instant), 2)
        return latest - previous

    def _margin(self, instant: datetime) -> timedelta:
        """How far to start away from ``instant`` to clear a clock change near it."""
        hour = instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return _margin_for_hour(self.timezone, hour)

    def next_runs(self, instant: datetime, count: int = 5) -> list[datetime]:
        runs = []
        for occurrence in self.after(instant):
            runs.append(occurrence)
            if len(runs) == count:
                break
        return runs

    def describe(self) -> str:
        """The expression in words, e.g. "Every fifth minute of every hour on Monday
        through Friday"."""
        return CronSim(self._expanded, datetime.now(self.zone)).explain()


@functools.lru_cache(maxsize=4096)
def _margin_for_hour(timezone: str, hour: datetime) -> timedelta:
    """The margin for any instant within ``hour`` (UTC): whether the offset changes
    anywhere from DST_REACH_H before the hour to DST_REACH_H after its end. Computed once
    per zone and hour: the materializer asks for thousands of jobs a step."""
    zone = ZoneInfo(timezone)
    offsets = {(hour + timedelta(hours=h)).astimezone(zone).utcoffset()
               for h in (-DST_REACH_H, 0, 1, DST_REACH_H + 1)}
    return timedelta(hours=DST_REACH_H) if len(offsets) > 1 else timedelta(0)


def parse_timezone(value: object, *, field: str = "timezone") -> str:
    if value is None:
        return "UTC"
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be an IANA time zone name like Europe/Berlin",
                              field)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(
            f"{field}: unknown time zone {value[:64]!r}; use an IANA name like Europe/Berlin",
            field,
        ) from None
    return value


def parse_schedule(expression: object, timezone: object, *,
                   now: datetime | None = None) -> Schedule:
    """Validate a cron expression and time zone; errors name the field and the problem."""
    zone = parse_timezone(timezone)
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("cron must be a non-empty cron expression string", "cron")
    if len(expression) > MAX_EXPRESSION_CHARS or "\x00" in expression:
        raise ValidationError("cron is not a plausible cron expression", "cron")
    schedule = Schedule(expression.strip(), zone)
    expanded = schedule._expanded
    if expanded.startswith("@"):
        raise ValidationError(
            f"cron: unknown alias {expression!r}; use one of {', '.join(ALIASES)}", "cron")
    fields = len(expanded.split())
    if fields not in (5, 6):
        raise ValidationError(
            f"cron has {fields} fields; use 5 (minute hour day month weekday) or 6 "
            "(second first)", "cron")
    start = now or datetime.now(UTC)
    try:
        first = next(schedule.after(start), None)
    except CronSimError as exc:
        raise ValidationError(f"cron: {exc}", "cron") from None
    except (ValueError, OverflowError) as exc:
        raise ValidationError(f"cron: not a valid expression ({exc})", "cron") from None
    if first is None or first - start > FIRST_RUN_WITHIN:
        raise ValidationError("cron never fires (no run within eight years)", "cron")
    return schedule
