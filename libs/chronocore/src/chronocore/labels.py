"""Worker labels and task targets: what a worker says about itself, what a task asks of
the worker that runs it, and whether one satisfies the other.

A worker advertises labels (``CHRONOSYNC_WORKER_LABELS="zone=eu-1,disk=ssd"``, plus
``host=<its host name>`` unless given). A task's ``target`` names labels; a worker
matches when its labels contain every one of them (key and value alike). The same rules
check a worker's variable at start-up and a client's submission, so any label a client
may ask for is one a worker may advertise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_WORKER_LABELS = 32
MAX_TARGET_LABELS = 16
MAX_KEY_CHARS = 63
MAX_VALUE_CHARS = 253  # a fully qualified host name fits
# Keys as Kubernetes writes them (``zone``, ``topology.kubernetes.io/zone``); values are
# host names, zones, roles: no ``,`` or ``=`` (the variable's separators), no spaces.
_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?")
_VALUE = re.compile(r"[A-Za-z0-9._:@/+-]+")


class LabelError(ValueError):
    """A label is malformed; the message says which and why."""


def check_label(key: object, value: object) -> None:
    if not isinstance(key, str) or not key:
        raise LabelError("label keys must be non-empty strings")
    if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
        raise LabelError(f"label key {key[:MAX_KEY_CHARS]!r} must be at most {MAX_KEY_CHARS} "
                         "letters, digits, '.', '_', '/' or '-', starting and ending with a "
                         "letter or digit")
    if not isinstance(value, str) or not value:
        raise LabelError(f"label {key!r} must have a non-empty string value")
    if len(value) > MAX_VALUE_CHARS or not _VALUE.fullmatch(value):
        raise LabelError(f"label {key!r}: the value must be at most {MAX_VALUE_CHARS} "
                         "letters, digits, or any of . _ : @ / + -")


def check_labels(labels: Mapping[str, object], *, limit: int) -> dict[str, str]:
    if len(labels) > limit:
        raise LabelError(f"at most {limit} labels, got {len(labels)}")
    for key, value in labels.items():
        check_label(key, value)
    return {str(k): str(v) for k, v in labels.items()}


def parse_worker_labels(raw: str | None, *, host: str) -> dict[str, str]:
    """``"zone=eu-1,disk=ssd"`` as a map, with ``host`` added unless given."""
    labels: dict[str, str] = {}
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise LabelError(f"{part!r} is not key=value")
        if key in labels:
            raise LabelError(f"label {key!r} is given twice")
        check_label(key, value)
        labels[key] = value
    if "host" not in labels:
        try:
            check_label("host", host)
        except LabelError:
            raise LabelError(f"the host name {host!r} is not a valid label value; set "
                             "host=... yourself") from None
        labels["host"] = host
    return check_labels(labels, limit=MAX_WORKER_LABELS)


def matches(worker_labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """The worker has every wanted label (what the claim's jsonb ``@>`` says too)."""
    return all(worker_labels.get(k) == v for k, v in wanted.items())


def describe(labels: Mapping[str, str]) -> str:
    """``disk=ssd,zone=eu-1``: the variable's own syntax, keys in order."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))
