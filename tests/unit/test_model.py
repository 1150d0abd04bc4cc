"""Unit tests for chronocore.model: submission validation, RFC 3339 timestamps, task JSON.

Pure logic, no database. The contract is SPEC.md §3.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rejection import assert_rejected_by, assert_wordy

from chronocore.model import (
    MAX_COMMAND_BYTES,
    MAX_TIMEOUT_S,
    Attempt,
    Submission,
    TaskRow,
    ValidationError,
    format_timestamp,
    parse_submission,
    parse_timestamp,
    task_resource,
)
from chronocore.queries import row_as

SEED_TIMESTAMP = "2026-12-25T22:34:00+05:30"
SEED_INSTANT = datetime(2026, 12, 25, 17, 4, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))


# --- helpers -----------------------------------------------------------------------------


def assert_rejected(body: object, field: str | None) -> ValidationError:
    """parse_submission(body) raises a ValidationError naming ``field``, in words."""
    return assert_rejected_by(lambda: parse_submission(body), field, given=body)


def assert_timestamp_rejected(value: object, field: str = "scheduled_at") -> ValidationError:
    try:
        accepted = parse_timestamp(value, field=field)
    except ValidationError as error:
        assert error.field == field
        assert_wordy(error)
        return error
    pytest.fail(f"accepted timestamp {value!r} as {accepted!r}; expected a ValidationError")


def submit(**fields: Any) -> Submission:
    return parse_submission({"command": "echo hello", **fields})


# --- body as a whole -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], ["command", "echo"], "echo hello", None, 42, 1.5, True])
def test_it_rejects_a_body_that_is_not_an_object(body: object) -> None:
    assert_rejected(body, None)


def test_it_accepts_a_minimal_submission_and_runs_it_now_at_most_once() -> None:
    submission = parse_submission({"command": "echo hello"})
    assert submission == Submission(
        command="echo hello",
        scheduled_at=None,
        delivery="at_most_once",
        max_attempts=1,
        timeout_s=None,
        name=None,
        idempotency_key=None,
        env={},
    )


def test_it_accepts_a_full_submission() -> None:
    submission = parse_submission(
        {
            "command": "date >> /tmp/ticks",
            "scheduled_at": SEED_TIMESTAMP,
            "name": "christmas",
            "delivery": "at_least_once",
            "max_attempts": 5,
            "timeout_s": 90,
            "idempotency_key": "req-1",
            "env": {"GREETING": "hi", "_X1": ""},
        }
    )
    assert submission.command == "date >> /tmp/ticks"
    assert submission.scheduled_at == SEED_INSTANT
    assert submission.name == "christmas"
    assert submission.delivery == "at_least_once"
    assert submission.max_attempts == 5
    assert submission.timeout_s == 90.0
    assert submission.idempotency_key == "req-1"
    assert submission.env == {"GREETING": "hi", "_X1": ""}


def test_it_treats_null_optional_fields_as_absent() -> None:
    submission = parse_submission(
        {
            "command": "true",
            "scheduled_at": None,
            "cron": None,
            "timezone": None,
            "name": None,
            "delivery": None,
            "max_attempts": None,
            "timeout_s": None,
            "idempotency_key": None,
            "env": None,
        }
    )
    assert submission == parse_submission({"command": "true"})


@pytest.mark.parametrize("name", ["comand", "Command", "priority", "", "kind"])
def test_it_rejects_an_unknown_field_and_names_it(name: str) -> None:
    error = assert_rejected({"command": "true", name: 1}, name)
    assert repr(name) in error.message


def test_it_names_one_of_several_unknown_fields() -> None:
    error = assert_rejected({"command": "true", "zeta": 1, "alpha": 2}, "alpha")
    assert "'alpha'" in error.message


def test_it_reports_an_unknown_field_even_when_the_command_is_missing() -> None:
    assert_rejected({"retries": 3}, "retries")


# --- command -------------------------------------------------------------------------------


def test_it_rejects_a_missing_command() -> None:
    assert_rejected({"scheduled_at": SEED_TIMESTAMP}, "command")


def test_it_rejects_a_null_command() -> None:
    assert_rejected({"command": None}, "command")


@pytest.mark.parametrize("command", ["", " ", "   \t\n\r "])
def test_it_rejects_an_empty_or_whitespace_only_command(command: str) -> None:
    assert_rejected({"command": command}, "command")


@pytest.mark.parametrize("command", [42, 1.5, True, ["echo", "hi"], {"sh": "echo"}])
def test_it_rejects_a_command_that_is_not_a_string(command: object) -> None:
    assert_rejected({"command": command}, "command")


@pytest.mark.parametrize("command", ["echo a\x00b", "\x00", "echo hi\x00"])
def test_it_rejects_a_command_with_a_nul_character(command: str) -> None:
    assert_rejected({"command": command}, "command")


def test_it_rejects_a_command_that_is_not_valid_unicode() -> None:
    lone_surrogate = json.loads('"echo \\ud800"')  # what the JSON decoder lets through
    assert_rejected({"command": lone_surrogate}, "command")


def test_it_accepts_a_command_of_exactly_64_kib() -> None:
    command = "a" * MAX_COMMAND_BYTES
    assert MAX_COMMAND_BYTES == 64 * 1024
    assert submit(command=command).command == command


def test_it_rejects_a_command_one_byte_over_64_kib() -> None:
    assert_rejected({"command": "a" * (MAX_COMMAND_BYTES + 1)}, "command")


def test_it_counts_the_command_limit_in_utf8_bytes_not_characters() -> None:
    exactly = "é" * (MAX_COMMAND_BYTES // 2)  # two bytes each: 65,536 bytes
    assert submit(command=exactly).command == exactly
    over = exactly + "a"  # 32,769 characters but 65,537 bytes
    assert len(over) < MAX_COMMAND_BYTES
    assert_rejected({"command": over}, "command")


def test_it_keeps_the_command_verbatim() -> None:
    command = "  printf '%s\\n' \"héllo\" | tr a-z A-Z  \n"
    assert submit(command=command).command == command


# --- scheduled_at (through the submission) -------------------------------------------------


def test_it_keeps_the_exact_instant_of_the_seed_timestamp() -> None:
    submission = submit(scheduled_at=SEED_TIMESTAMP)
    assert submission.scheduled_at == SEED_INSTANT
    assert submission.scheduled_at is not None
    assert submission.scheduled_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert format_timestamp(submission.scheduled_at) == "2026-12-25T17:04:00Z"


def test_it_rejects_a_scheduled_at_without_offset_and_mentions_the_offset() -> None:
    error = assert_rejected(
        {"command": "true", "scheduled_at": "2026-12-25T22:34:00"}, "scheduled_at"
    )
    assert "offset" in error.message.lower()


@pytest.mark.parametrize("value", [1766682240, 1.5, True, [SEED_TIMESTAMP], {"at": 1}])
def test_it_rejects_a_scheduled_at_that_is_not_a_string(value: object) -> None:
    assert_rejected({"command": "true", "scheduled_at": value}, "scheduled_at")


def test_it_rejects_a_garbage_scheduled_at() -> None:
    assert_rejected({"command": "true", "scheduled_at": "next tuesday"}, "scheduled_at")


# --- cron and timezone: a one-off task has neither (jobs: tests/unit/test_cron.py) ---------


@pytest.mark.parametrize("cron", ["*/5 * * * *", "*/5 * * * * *", "", 5])
def test_a_one_off_submission_refuses_cron_and_names_the_field(cron: object) -> None:
    assert_rejected({"command": "true", "cron": cron}, "cron")


def test_it_names_cron_when_both_cron_and_timezone_are_given() -> None:
    assert_rejected(
        {"command": "true", "cron": "0 * * * *", "timezone": "Europe/Berlin"}, "cron"
    )


@pytest.mark.parametrize("tz", ["Europe/Berlin", "UTC", "Not/AZone", ""])
def test_it_rejects_a_timezone_without_cron_and_names_the_field(tz: str) -> None:
    assert_rejected({"command": "true", "timezone": tz}, "timezone")


def test_it_rejects_a_timezone_next_to_a_one_off_scheduled_at() -> None:
    assert_rejected(
        {"command": "true", "scheduled_at": SEED_TIMESTAMP, "timezone": "Asia/Kolkata"},
        "timezone",
    )


# --- name ----------------------------------------------------------------------------------


def test_it_accepts_a_name_of_200_bytes() -> None:
    assert submit(name="n" * 200).name == "n" * 200


def test_it_rejects_a_name_over_200_bytes() -> None:
    assert_rejected({"command": "true", "name": "n" * 201}, "name")


def test_it_counts_the_name_limit_in_utf8_bytes() -> None:
    assert_rejected({"command": "true", "name": "é" * 101}, "name")  # 202 bytes


@pytest.mark.parametrize("name", [42, True, ["a"], {"a": 1}])
def test_it_rejects_a_name_that_is_not_a_string(name: object) -> None:
    assert_rejected({"command": "true", "name": name}, "name")


def test_it_rejects_a_name_with_a_nul_character() -> None:
    assert_rejected({"command": "true", "name": "nightly\x00"}, "name")


# --- delivery ------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["at_most_once", "at_least_once"])
def test_it_accepts_both_delivery_modes(delivery: str) -> None:
    assert submit(delivery=delivery).delivery == delivery


@pytest.mark.parametrize(
    "delivery", ["exactly_once", "AT_MOST_ONCE", "at-least-once", " at_most_once", "once"]
)
def test_it_rejects_an_unknown_delivery(delivery: str) -> None:
    error = assert_rejected({"command": "true", "delivery": delivery}, "delivery")
    assert "at_most_once" in error.message
    assert "at_least_once" in error.message


@pytest.mark.parametrize("delivery", [1, True, ["at_most_once"]])
def test_it_rejects_a_delivery_that_is_not_a_string(delivery: object) -> None:
    assert_rejected({"command": "true", "delivery": delivery}, "delivery")


def test_it_rejects_an_empty_delivery() -> None:
    # BUG: `_string(body, "delivery") or "at_most_once"` turns "" into the default.
    assert_rejected({"command": "true", "delivery": ""}, "delivery")


# --- max_attempts --------------------------------------------------------------------------


def test_it_defaults_max_attempts_to_1_for_at_most_once() -> None:
    assert submit().max_attempts == 1
    assert submit(delivery="at_most_once").max_attempts == 1


def test_it_defaults_max_attempts_to_3_for_at_least_once() -> None:
    assert submit(delivery="at_least_once").max_attempts == 3


@pytest.mark.parametrize("value", [1, 2, 50, 100])
def test_it_accepts_max_attempts_from_1_to_100_with_at_least_once(value: int) -> None:
    assert submit(delivery="at_least_once", max_attempts=value).max_attempts == value


def test_it_accepts_max_attempts_of_1_with_at_most_once() -> None:
    assert submit(delivery="at_most_once", max_attempts=1).max_attempts == 1


@pytest.mark.parametrize("value", [True, False])
def test_it_rejects_a_boolean_max_attempts(value: bool) -> None:
    assert_rejected(
        {"command": "true", "delivery": "at_least_once", "max_attempts": value}, "max_attempts"
    )


@pytest.mark.parametrize("value", [2.0, 1.0, 2.5, math.nan, "3", [3]])
def test_it_rejects_a_max_attempts_that_is_not_a_whole_number(value: object) -> None:
    assert_rejected(
        {"command": "true", "delivery": "at_least_once", "max_attempts": value}, "max_attempts"
    )


@pytest.mark.parametrize("value", [0, -1, 101, 10**6])
def test_it_rejects_max_attempts_outside_1_to_100(value: int) -> None:
    assert_rejected(
        {"command": "true", "delivery": "at_least_once", "max_attempts": value}, "max_attempts"
    )


@pytest.mark.parametrize("value", [2, 3, 100])
def test_it_rejects_max_attempts_above_1_with_at_most_once(value: int) -> None:
    error = assert_rejected({"command": "true", "max_attempts": value}, "max_attempts")
    assert "at_least_once" in error.message
    assert_rejected(
        {"command": "true", "delivery": "at_most_once", "max_attempts": value}, "max_attempts"
    )


# --- timeout_s -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [30, 1, 0.5, 1e-3, MAX_TIMEOUT_S, int(MAX_TIMEOUT_S)])
def test_it_accepts_a_positive_timeout_as_a_float(value: float) -> None:
    timeout = submit(timeout_s=value).timeout_s
    assert timeout == value
    assert type(timeout) is float


@pytest.mark.parametrize("value", [True, False])
def test_it_rejects_a_boolean_timeout(value: bool) -> None:
    assert_rejected({"command": "true", "timeout_s": value}, "timeout_s")


@pytest.mark.parametrize("value", ["30", "", [30], {"s": 30}])
def test_it_rejects_a_timeout_that_is_not_a_number(value: object) -> None:
    assert_rejected({"command": "true", "timeout_s": value}, "timeout_s")


@pytest.mark.parametrize("value", [0, 0.0, -0.0, -1, -1e-9])
def test_it_rejects_a_zero_or_negative_timeout(value: float) -> None:
    assert_rejected({"command": "true", "timeout_s": value}, "timeout_s")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_it_rejects_a_timeout_that_is_nan_or_infinite(value: float) -> None:
    assert_rejected({"command": "true", "timeout_s": value}, "timeout_s")


@pytest.mark.parametrize("value", [MAX_TIMEOUT_S + 1, 1e308, 10**400])
def test_it_rejects_a_huge_timeout(value: float) -> None:
    assert_rejected({"command": "true", "timeout_s": value}, "timeout_s")


# --- idempotency_key -----------------------------------------------------------------------


def test_it_accepts_an_idempotency_key_of_200_bytes() -> None:
    assert submit(idempotency_key="k" * 200).idempotency_key == "k" * 200


def test_it_rejects_an_empty_idempotency_key() -> None:
    assert_rejected({"command": "true", "idempotency_key": ""}, "idempotency_key")


def test_it_rejects_an_idempotency_key_over_200_bytes() -> None:
    assert_rejected({"command": "true", "idempotency_key": "k" * 201}, "idempotency_key")


@pytest.mark.parametrize("key", [42, True, ["k"], {"k": 1}])
def test_it_rejects_an_idempotency_key_that_is_not_a_string(key: object) -> None:
    assert_rejected({"command": "true", "idempotency_key": key}, "idempotency_key")


def test_it_rejects_an_idempotency_key_with_a_nul_character() -> None:
    assert_rejected({"command": "true", "idempotency_key": "k\x00"}, "idempotency_key")


# --- env -----------------------------------------------------------------------------------


def test_it_defaults_env_to_an_empty_object() -> None:
    assert submit().env == {}
    assert submit(env={}).env == {}


def test_it_accepts_env_names_in_shell_variable_syntax() -> None:
    env = {"A": "1", "_": "2", "lower_case": "3", "X9_Y": "4", "_9": "5"}
    assert submit(env=env).env == env


def test_it_copies_the_env_rather_than_aliasing_the_request() -> None:
    env = {"A": "1"}
    submission = submit(env=env)
    env["B"] = "2"
    assert submission.env == {"A": "1"}


@pytest.mark.parametrize("env", [[], [["A", "1"]], "A=1", 1, True])
def test_it_rejects_an_env_that_is_not_an_object(env: object) -> None:
    assert_rejected({"command": "true", "env": env}, "env")


@pytest.mark.parametrize(
    "name", ["", "1ABC", "A-B", "A=B", "A B", "A.B", "PATH ", " PATH", "ÉTÉ", "A\x00"]
)
def test_it_rejects_an_env_name_that_is_not_a_variable_name(name: str) -> None:
    assert_rejected({"command": "true", "env": {name: "v"}}, "env")


def test_it_rejects_an_env_name_with_a_trailing_newline() -> None:
    # BUG: _ENV_NAME ends in `$`, which also matches just before a final "\n".
    assert_rejected({"command": "true", "env": {"FOO\n": "v"}}, "env")


@pytest.mark.parametrize("name", ["CHRONOSYNC_", "CHRONOSYNC_TASK_ID", "CHRONOSYNC_API_TOKEN"])
def test_it_rejects_reserved_chronosync_env_names(name: str) -> None:
    error = assert_rejected({"command": "true", "env": {name: "x"}}, "env")
    assert "reserved" in error.message


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
def test_it_rejects_an_env_value_that_is_not_a_string(value: object) -> None:
    assert_rejected({"command": "true", "env": {"A": value}}, "env")


def test_it_rejects_an_env_value_with_a_nul_character() -> None:
    assert_rejected({"command": "true", "env": {"A": "x\x00y"}}, "env")


def test_it_accepts_an_env_value_of_32_kib_and_rejects_one_byte_more() -> None:
    assert submit(env={"A": "v" * 32 * 1024}).env["A"] == "v" * 32 * 1024
    assert_rejected({"command": "true", "env": {"A": "v" * (32 * 1024 + 1)}}, "env")


def test_it_accepts_256_env_variables_and_rejects_257() -> None:
    assert len(submit(env={f"V{i}": "" for i in range(256)}).env) == 256
    assert_rejected({"command": "true", "env": {f"V{i}": "" for i in range(257)}}, "env")


def test_it_rejects_an_env_value_that_is_not_valid_unicode() -> None:
    # BUG: the command is checked for lone surrogates, env values are not; "\ud800" can only
    # fail later, when it is written to Postgres or handed to the worker's process.
    lone_surrogate = json.loads('"\\ud800"')
    assert_rejected({"command": "true", "env": {"A": lone_surrogate}}, "env")


# --- parse_timestamp -----------------------------------------------------------------------


def test_it_parses_the_seed_timestamp_to_the_same_instant() -> None:
    parsed = parse_timestamp(SEED_TIMESTAMP, field="scheduled_at")
    assert parsed == datetime(2026, 12, 25, 17, 4, tzinfo=UTC)
    assert parsed == datetime(2026, 12, 25, 22, 34, tzinfo=IST)
    assert parsed.tzinfo is not None
    assert format_timestamp(parsed) == "2026-12-25T17:04:00Z"


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-25T17:04:00Z",
        "2026-12-25T17:04:00z",
        "2026-12-25t17:04:00z",
        "2026-12-25 17:04:00Z",
        "2026-12-25T17:04:00+00:00",
        "2026-12-25T17:04:00-00:00",
        "2026-12-25T22:34:00+05:30",
        "2026-12-25T10:04:00-07:00",
        "2026-12-25T05:04:00-12:00",
        "2026-12-26T07:04:00+14:00",
        "2026-12-25T12:34:00-04:30",
    ],
)
def test_it_parses_utc_designators_and_offsets_to_the_same_instant(value: str) -> None:
    assert parse_timestamp(value, field="scheduled_at") == SEED_INSTANT


def test_it_keeps_a_negative_offset_on_the_parsed_value() -> None:
    parsed = parse_timestamp("2026-12-25T12:34:00-04:30", field="scheduled_at")
    assert parsed.utcoffset() == -timedelta(hours=4, minutes=30)
    assert format_timestamp(parsed) == "2026-12-25T17:04:00Z"


@pytest.mark.parametrize(
    ("value", "microsecond"),
    [
        ("2026-12-25T17:04:00.1Z", 100_000),
        ("2026-12-25T17:04:00.12Z", 120_000),
        ("2026-12-25T17:04:00.000001Z", 1),
        ("2026-12-25T17:04:00.123456Z", 123_456),
        ("2026-12-25T17:04:00.1234567Z", 123_456),
        ("2026-12-25T17:04:00.123456789Z", 123_456),
        ("2026-12-25T17:04:00.999999999+05:30", 999_999),
        ("2026-12-25T17:04:00.000000999z", 0),
    ],
)
def test_it_truncates_fractional_seconds_to_microseconds(value: str, microsecond: int) -> None:
    parsed = parse_timestamp(value, field="scheduled_at")
    assert parsed.microsecond == microsecond
    assert parsed.second == 0  # truncated, never rounded up into the next second


def test_it_rejects_more_than_nine_fractional_digits() -> None:
    assert_timestamp_rejected("2026-12-25T17:04:00.1234567890Z")


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-25T22:34:00",
        "2026-12-25T22:34:00.5",
        "2026-12-25 22:34:00",
        "2026-12-25t22:34:00",
        "2026-12-25T22:34",
    ],
)
def test_it_rejects_a_timestamp_without_offset_and_says_so(value: str) -> None:
    error = assert_timestamp_rejected(value)
    assert "offset" in error.message.lower()
    assert "scheduled_at" in error.message


@pytest.mark.parametrize(
    "value",
    [
        "2026-02-30T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-12-00T00:00:00Z",
        "2026-12-25T24:00:00Z",
        "2026-12-25T17:60:00Z",
        "2026-12-25T17:04:61Z",
        "0000-01-01T00:00:00Z",
        "2026-12-25T17:04:00+24:00",
    ],
)
def test_it_rejects_dates_and_times_that_do_not_exist(value: str) -> None:
    assert_timestamp_rejected(value)


def test_it_accepts_the_leap_day_of_a_leap_year() -> None:
    parsed = parse_timestamp("2028-02-29T00:00:00Z", field="scheduled_at")
    assert parsed == datetime(2028, 2, 29, tzinfo=UTC)


def test_it_rejects_an_offset_with_sixty_minutes() -> None:
    # BUG: RFC 3339 offset minutes are 00-59; "+05:60" is silently read as +06:00.
    assert_timestamp_rejected("2026-12-25T23:04:00+05:60")


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"]
)
def test_it_rejects_a_timestamp_whose_utc_instant_is_out_of_range(value: str) -> None:
    assert_timestamp_rejected(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "tomorrow",
        "now",
        "2026-12-25",
        "17:04:00Z",
        "2026-12-25T17:04Z",
        "2026-12-25T17:04:00+0530",
        "2026-12-25T17:04:00+05",
        "2026-12-25T17:04:00 +05:30",
        "2026-12-25T17:04:00 Z",
        "2026/12/25T17:04:00Z",
        "2026-12-25T17:04:00.Z",
        "2026-12-25T17:04:00,5Z",
        "26-12-25T17:04:00Z",
        "+2026-12-25T17:04:00Z",
        "2026-12-25T17:04:00ZZ",
        "2026-12-25T17:04:00UTC",
        "2026-12-25T17:04:00Z\n",
        " 2026-12-25T17:04:00Z",
        "2026-12-25T17:04:00Z ",
        "2026-W52-5T17:04:00Z",
        "20261225T170400Z",
        "٢٠٢٦-١٢-٢٥T17:04:00Z",
    ],
)
def test_it_rejects_a_garbage_timestamp_string(value: str) -> None:
    assert_timestamp_rejected(value)


@pytest.mark.parametrize(
    "value", [None, 1766682240, 1766682240.0, True, [SEED_TIMESTAMP], {}, SEED_INSTANT]
)
def test_it_rejects_a_timestamp_that_is_not_a_string(value: object) -> None:
    assert_timestamp_rejected(value)


def test_it_names_the_field_it_was_given_in_a_timestamp_error() -> None:
    error = assert_timestamp_rejected("2026-12-25T22:34:00", field="before")
    assert error.field == "before"
    assert "before" in error.message


FIXED_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# One day in from the ends of datetime's range, so the UTC instant always exists.
AWARE_DATETIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=FIXED_OFFSETS
)


@settings(database=None, deadline=None, max_examples=300)
@given(AWARE_DATETIMES)
def test_parsing_an_isoformat_timestamp_keeps_the_instant_and_offset(moment: datetime) -> None:
    parsed = parse_timestamp(moment.isoformat(), field="scheduled_at")
    assert parsed == moment
    assert parsed.utcoffset() == moment.utcoffset()


@settings(database=None, deadline=None, max_examples=300)
@given(AWARE_DATETIMES)
def test_formatting_then_parsing_a_timestamp_keeps_the_instant(moment: datetime) -> None:
    text = format_timestamp(moment)
    assert text is not None
    assert text.endswith("Z")
    assert parse_timestamp(text, field="scheduled_at") == moment


# --- format_timestamp ----------------------------------------------------------------------


def test_it_formats_none_as_none() -> None:
    assert format_timestamp(None) is None


def test_it_formats_in_utc_with_z_and_whole_seconds() -> None:
    assert format_timestamp(datetime(2026, 12, 25, 22, 34, tzinfo=IST)) == "2026-12-25T17:04:00Z"
    assert format_timestamp(SEED_INSTANT) == "2026-12-25T17:04:00Z"


def test_it_formats_microseconds_only_when_there_are_some() -> None:
    moment = datetime(2026, 12, 25, 17, 4, 0, 1_500, tzinfo=UTC)
    assert format_timestamp(moment) == "2026-12-25T17:04:00.001500Z"


def test_it_formats_a_negative_offset_into_utc_across_midnight() -> None:
    moment = datetime(2026, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert format_timestamp(moment) == "2027-01-01T01:00:00Z"


# --- Submission.request_hash ---------------------------------------------------------------

BASE_PAYLOAD: dict[str, Any] = {
    "command": "echo hello",
    "scheduled_at": SEED_TIMESTAMP,
    "name": "greeting",
    "delivery": "at_least_once",
    "max_attempts": 3,
    "timeout_s": 30,
    "idempotency_key": "req-1",
    "env": {"A": "1", "B": "2"},
}


def test_the_same_payload_gives_the_same_request_hash() -> None:
    first = parse_submission(dict(BASE_PAYLOAD))
    second = parse_submission(json.loads(json.dumps(BASE_PAYLOAD)))
    assert first.request_hash() == second.request_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", first.request_hash())


def test_the_request_hash_ignores_env_key_order() -> None:
    reordered = {**BASE_PAYLOAD, "env": {"B": "2", "A": "1"}}
    assert parse_submission(reordered).request_hash() == (
        parse_submission(BASE_PAYLOAD).request_hash()
    )


def test_the_request_hash_sees_the_instant_not_the_offset_it_was_written_in() -> None:
    in_utc = {**BASE_PAYLOAD, "scheduled_at": "2026-12-25T17:04:00Z"}
    assert parse_submission(in_utc).request_hash() == (
        parse_submission(BASE_PAYLOAD).request_hash()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"command": "echo hello!"},
        {"command": "echo hello "},
        {"scheduled_at": "2026-12-25T17:04:01Z"},
        {"scheduled_at": "2026-12-25T17:04:00.000001Z"},
        {"scheduled_at": None},
        {"name": "greeting2"},
        {"name": None},
        {"delivery": "at_most_once", "max_attempts": 1},
        {"max_attempts": 4},
        {"timeout_s": 31},
        {"timeout_s": 30.5},
        {"timeout_s": None},
        {"idempotency_key": "req-2"},
        {"env": {"A": "1", "B": "3"}},
        {"env": {"A": "1"}},
        {"env": {"A": "1", "B": "2", "C": ""}},
        {"env": {}},
    ],
)
def test_changing_any_field_changes_the_request_hash(change: dict[str, Any]) -> None:
    base = parse_submission(BASE_PAYLOAD)
    changed = parse_submission({**BASE_PAYLOAD, **change})
    assert changed.request_hash() != base.request_hash()


def test_the_request_hash_of_a_run_now_submission_is_stable() -> None:
    assert submit().request_hash() == submit().request_hash()


# --- task_resource -------------------------------------------------------------------------


def make_row(**overrides: Any) -> TaskRow:
    row: dict[str, Any] = {
        "id": 42,
        "command": "echo hello",
        "status": "succeeded",
        "scheduled_at": datetime(2026, 12, 25, 22, 34, tzinfo=IST),
        "due_at": datetime(2026, 12, 25, 22, 34, tzinfo=IST),
        "picked_at": datetime(2026, 12, 25, 17, 4, 0, 250_000, tzinfo=UTC),
        "started_at": datetime(2026, 12, 25, 12, 4, 1, tzinfo=timezone(timedelta(hours=-5))),
        "completed_at": datetime(2026, 12, 25, 17, 4, 2, tzinfo=UTC),
        "failed_at": None,
        "cancelled_at": None,
        "created_at": datetime(2026, 12, 24, 9, 0, tzinfo=UTC),
        "delivery": "at_least_once",
        "attempt": 2,
        "max_attempts": 3,
        "timeout_s": 30.0,
        "exit_code": 0,
        "error": None,
        "output": "hello\n",
        "worker_id": "worker-a",
        "job_id": None,
        "idempotency_key": "req-1",
        "name": "greeting",
        "env": {"A": "1"},
        "retry_of": 7,
        "request_hash": "ab" * 32,  # columns the API does not show are left out
    }
    row.update(overrides)
    return row_as(TaskRow, row)


ATTEMPTS = [row_as(Attempt, a) for a in [
    {
        "attempt": 1,
        "worker_id": "worker-b",
        "started_at": datetime(2026, 12, 25, 22, 34, 0, tzinfo=IST),
        "finished_at": datetime(2026, 12, 25, 17, 4, 0, 900_000, tzinfo=UTC),
        "exit_code": None,
        "error": "worker_lost",
        "task_id": 42,  # extra columns of the attempt row are not shown
    },
    {
        "attempt": 2,
        "worker_id": "worker-a",
        "started_at": datetime(2026, 12, 25, 17, 4, 1, tzinfo=UTC),
        "finished_at": None,
        "exit_code": None,
        "error": None,
        "task_id": 42,
    },
]]


def test_a_task_resource_has_kind_task_and_every_documented_field() -> None:
    resource = task_resource(make_row(), ATTEMPTS)
    assert resource["kind"] == "task"
    documented = {
        "id", "kind", "command", "status", "scheduled_at", "picked_at", "started_at",
        "completed_at", "failed_at", "cancelled_at", "created_at", "delivery", "attempt",
        "max_attempts", "timeout_s", "exit_code", "error", "output", "worker_id", "job_id",
        "idempotency_key", "attempts", "retry_of",
    }
    assert documented <= set(resource)


def test_a_task_resource_gives_timestamps_in_utc_with_z() -> None:
    resource = task_resource(make_row(), None)
    assert resource["scheduled_at"] == "2026-12-25T17:04:00Z"
    assert resource["picked_at"] == "2026-12-25T17:04:00.250000Z"
    assert resource["started_at"] == "2026-12-25T17:04:01Z"
    assert resource["completed_at"] == "2026-12-25T17:04:02Z"
    assert resource["created_at"] == "2026-12-24T09:00:00Z"
    assert resource["failed_at"] is None
    assert resource["cancelled_at"] is None


def test_a_task_resource_passes_the_other_columns_through() -> None:
    row = make_row()
    resource = task_resource(row, None)
    for name in ("id", "command", "status", "delivery", "attempt", "max_attempts",
                 "timeout_s", "exit_code", "error", "output", "worker_id", "job_id",
                 "idempotency_key", "name", "env", "retry_of"):
        assert resource[name] == getattr(row, name), name


def test_a_task_resource_of_a_scheduled_task_has_null_timestamps() -> None:
    row = make_row(status="scheduled", picked_at=None, started_at=None, completed_at=None,
                   attempt=0, exit_code=None, output=None, worker_id=None)
    resource = task_resource(row, [])
    for name in ("picked_at", "started_at", "completed_at", "failed_at", "cancelled_at"):
        assert resource[name] is None, name
    assert resource["status"] == "scheduled"
    assert resource["attempts"] == []


def test_a_task_resource_lists_attempts_in_the_documented_shape() -> None:
    resource = task_resource(make_row(), ATTEMPTS)
    assert resource["attempts"] == [
        {
            "attempt": 1,
            "worker_id": "worker-b",
            "started_at": "2026-12-25T17:04:00Z",
            "finished_at": "2026-12-25T17:04:00.900000Z",
            "exit_code": None,
            "error": "worker_lost",
        },
        {
            "attempt": 2,
            "worker_id": "worker-a",
            "started_at": "2026-12-25T17:04:01Z",
            "finished_at": None,
            "exit_code": None,
            "error": None,
        },
    ]


def test_a_task_resource_without_attempt_history_has_no_attempts_key() -> None:
    assert "attempts" not in task_resource(make_row(), None)


def test_a_task_resource_of_a_listed_row_says_whether_its_output_was_cut() -> None:
    row = make_row(output="the end", output_truncated=True)
    resource = task_resource(row, None)
    assert (resource["output"], resource["output_truncated"]) == ("the end", True)
    assert "output_truncated" not in task_resource(make_row(), None)


def test_a_task_resource_is_json_serializable() -> None:
    resource = task_resource(make_row(), ATTEMPTS)
    assert json.loads(json.dumps(resource)) == resource


@pytest.mark.parametrize("name", ["BASH_ENV", "ENV", "PATH", "LD_PRELOAD", "LD_AUDIT",
                                  "PYTHONWARNINGS", "PERL5OPT", "NODE_OPTIONS", "BROWSER",
                                  "GIT_CONFIG_COUNT", "GIT_SSH_COMMAND", "SHELLOPTS"])
def test_it_rejects_env_names_that_change_what_a_command_loads_or_runs(name: str) -> None:
    error = assert_rejected({"command": "true", "env": {name: "x"}}, "env")
    assert name in error.message


def test_it_accepts_env_names_that_only_resemble_unsafe_ones() -> None:
    env = {"path": "a", "MY_PATH": "b", "ENVIRONMENT": "c", "LD": "d", "GITHUB_REF": "e"}
    assert submit(env=env).env == env
