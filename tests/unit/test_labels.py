"""Worker labels (CHRONOSYNC_WORKER_LABELS) and task targets: strict syntax, bounded
sizes, and what matches what."""

from __future__ import annotations

import socket

import pytest

from chronocore.config import Config, ConfigError
from chronocore.jobs import parse_job
from chronocore.labels import MAX_TARGET_LABELS, MAX_WORKER_LABELS, describe, matches
from chronocore.model import ValidationError, fingerprint, parse_submission

DSN = {"CHRONOSYNC_DSN": "host=db"}


def labels_of(raw: str) -> dict[str, str]:
    return Config.from_env({**DSN, "CHRONOSYNC_WORKER_LABELS": raw}).worker_labels


def test_a_worker_advertises_its_labels_and_its_host_name() -> None:
    assert labels_of(" zone=eu-1, disk=ssd ,") == {"zone": "eu-1", "disk": "ssd",
                                                  "host": socket.gethostname()}
    assert Config.from_env(DSN).worker_labels == {"host": socket.gethostname()}


def test_a_host_label_given_replaces_the_host_name() -> None:
    assert labels_of("host=db-3,role=web") == {"host": "db-3", "role": "web"}


@pytest.mark.parametrize("raw", [
    "zone", "zone=", "=eu-1", "zone=eu 1", "zone=eu-1,zone=eu-2", "-zone=x", "zone=a=b",
    "zo ne=x", "zone=\u00e9t\u00e9", "k" * 64 + "=v", "k=" + "v" * 254,
    ",".join(f"k{i}=v" for i in range(MAX_WORKER_LABELS)),  # plus host: one too many
])
def test_it_refuses_bad_worker_labels_at_start_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="CHRONOSYNC_WORKER_LABELS"):
        labels_of(raw)


def test_a_worker_matches_when_it_has_every_label_of_the_target() -> None:
    worker = {"zone": "eu-1", "disk": "ssd", "host": "db-3"}
    assert matches(worker, {"zone": "eu-1"})
    assert matches(worker, {"zone": "eu-1", "disk": "ssd"})
    assert not matches(worker, {"zone": "eu-2"})
    assert not matches(worker, {"zone": "eu-1", "gpu": "yes"})
    assert describe({"zone": "eu-1", "disk": "ssd"}) == "disk=ssd,zone=eu-1"


def test_a_submission_and_a_job_carry_their_target() -> None:
    task = parse_submission({"command": "true", "target": {"labels": {"zone": "eu-1"}}})
    assert task.target == {"labels": {"zone": "eu-1"}}
    every = parse_submission({"command": "true",
                              "target": {"labels": {"zone": "eu-1"}, "all": True}})
    assert every.target == {"labels": {"zone": "eu-1"}, "all": True}
    one = parse_submission({"command": "true",
                            "target": {"labels": {"zone": "eu-1"}, "all": False}})
    assert one.target == {"labels": {"zone": "eu-1"}}
    job = parse_job({"command": "true", "cron": "* * * * *",
                     "target": {"labels": {"role": "web"}}})
    assert job.target == {"labels": {"role": "web"}}


def test_a_job_broadcast_to_every_worker_refuses_the_forbid_policy() -> None:
    body = {"command": "true", "cron": "* * * * *", "concurrency_policy": "forbid",
            "target": {"labels": {"role": "web"}, "all": True}}
    with pytest.raises(ValidationError) as raised:
        parse_job(body)
    assert raised.value.field == "target"
    assert parse_job({**body, "concurrency_policy": "replace"}).target == body["target"]


def test_no_target_hashes_as_before_targets_existed() -> None:
    plain = parse_submission({"command": "true", "idempotency_key": "k"})
    aimed = parse_submission({"command": "true", "idempotency_key": "k",
                              "target": {"labels": {"zone": "eu-1"}}})
    before_targets = {"command": "true", "scheduled_at": None, "delivery": "at_most_once",
                      "max_attempts": 1, "timeout_s": None, "name": None,
                      "idempotency_key": "k", "env": {}}
    assert plain.request_hash() == fingerprint(before_targets)
    assert plain.request_hash() != aimed.request_hash()
    assert plain.request_hash() == parse_submission(
        {"command": "true", "idempotency_key": "k", "target": None}).request_hash()


@pytest.mark.parametrize("target", [
    "zone=eu-1", [], {}, {"labels": {}}, {"labels": []}, {"labels": "zone=eu-1"},
    {"labels": {"zone": ""}}, {"labels": {"zone": 1}}, {"labels": {"zone": None}},
    {"labels": {"": "x"}}, {"labels": {"zone": "eu 1"}}, {"labels": {"zone": "a,b"}},
    {"labels": {"zone": "eu-1"}, "all": "yes"}, {"labels": {"zone": "eu-1"}, "all": 1},
    {"labels": {"zone": "eu-1"}, "any": True}, {"all": True},
    {"labels": {f"k{i}": "v" for i in range(MAX_TARGET_LABELS + 1)}},
    {"labels": {"k" * 64: "v"}}, {"labels": {"k": "v" * 254}},
    {"labels": {"zone": "\ud800"}},
])
def test_it_refuses_a_bad_target_naming_the_field(target: object) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_submission({"command": "true", "target": target})
    assert raised.value.field == "target"
    with pytest.raises(ValidationError) as raised:
        parse_job({"command": "true", "cron": "* * * * *", "target": target})
    assert raised.value.field == "target"
