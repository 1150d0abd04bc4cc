"""Metrics in the Prometheus text format, gathered through PostgreSQL.

Each process counts what it does in its own ``REGISTRY`` (counters, gauges, histograms)
and writes a snapshot into its ``nodes`` row with every heartbeat. Any scheduler's
``/metrics`` renders every live node's snapshot, each sample labelled with ``node`` and
``kind``, plus figures read from the database itself (queue depth, slots, nodes): one
scrape target for the whole cluster, reachable even where workers are not.

The exposition stays valid at every moment: ``node`` and ``kind`` are the renderer's
labels, so a process's own metrics may not use them (``RESERVED_LABELS``); a counter is
declared, at 0, before its first event, so an alert on its rate has a series to read.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterable
from typing import Any

# Lateness (started - scheduled) buckets: from a millisecond to a minute.
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60)
# How long commands run: from a `true` to a nightly batch.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_START_TIME = time.time()

Labels = tuple[tuple[str, str], ...]
# Added by ``render`` to every node's samples: a process's own labels may not use them.
RESERVED_LABELS = frozenset({"node", "kind"})


class Registry:
    """Metric families of one process; thread-safe; a snapshot is plain JSON."""

    def __init__(self, *, reserved: frozenset[str] = RESERVED_LABELS) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, dict[str, Any]] = {}
        self._reserved = reserved

    def _family(self, name: str, kind: str, help_text: str,
                buckets: tuple[float, ...] = ()) -> dict[str, Any]:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = {"type": kind, "help": help_text,
                                             "buckets": list(buckets), "samples": {}}
        return family

    def _key(self, labels: dict[str, str]) -> Labels:
        clash = self._reserved.intersection(labels)
        if clash:
            raise ValueError(f"label {sorted(clash)[0]!r} is reserved for the renderer")
        return tuple(sorted((k, str(v)) for k, v in labels.items()))

    def declare_counter(self, name: str, help_text: str,
                        *label_sets: dict[str, str]) -> None:
        """Make a counter's series exist at 0 (one per label set) before any event."""
        with self._lock:
            samples = self._family(name, "counter", help_text)["samples"]
            for labels in label_sets or ({},):
                samples.setdefault(self._key(labels), 0.0)

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            samples = self._family(name, "counter", help_text)["samples"]
            key = self._key(labels)
            samples[key] = samples.get(key, 0.0) + amount

    def set(self, name: str, help_text: str, value: float, *, metric_type: str = "gauge",
            **labels: str) -> None:
        """A value taken as it is: a gauge, or (``metric_type="counter"``) a total that another
        source keeps, such as the kernel's count of CPU seconds."""
        with self._lock:
            self._family(name, metric_type, help_text)["samples"][self._key(labels)] = value

    def observe(self, name: str, help_text: str, value: float, *,
                buckets: tuple[float, ...], **labels: str) -> None:
        with self._lock:
            family = self._family(name, "histogram", help_text, buckets)
            sample = family["samples"].setdefault(
                self._key(labels), {"counts": [0] * (len(buckets) + 1), "sum": 0.0})
            index = next((i for i, b in enumerate(buckets) if value <= b), len(buckets))
            sample["counts"][index] += 1
            sample["sum"] += value

    def snapshot(self) -> dict[str, Any]:
        """The families as JSON, with this process's own figures added."""
        self.set("process_resident_memory_bytes", "Resident memory of the process.",
                 _rss_bytes())
        self.set("process_cpu_seconds_total", "CPU time used by the process.", _cpu_seconds(),
                 metric_type="counter")
        self.set("process_start_time_seconds", "Start of the process, Unix time.",
                 _START_TIME)
        self.set("process_open_fds", "Open file descriptors.", _open_fds())
        with self._lock:
            return {name: {**family, "samples": [[list(map(list, key)), value]
                                                 for key, value in family["samples"].items()]}
                    for name, family in self._families.items()}


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        return 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _open_fds() -> float:
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return 0.0


REGISTRY = Registry()


class Counter:
    """A counter of this process, declared when its module loads: at 0 for each label set
    given, so its series is there before the first event."""

    def __init__(self, name: str, help_text: str, *label_sets: dict[str, str]) -> None:
        self.name = name
        self.help = help_text
        REGISTRY.declare_counter(name, help_text, *label_sets)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        REGISTRY.inc(self.name, self.help, amount, **labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(sources: list[tuple[dict[str, str], dict[str, Any]]]) -> str:
    """Prometheus text for snapshots from many nodes: ``[(extra labels, snapshot)]``."""
    families: dict[str, dict[str, Any]] = {}
    for extra, snapshot in sources:
        for name, family in (snapshot or {}).items():
            merged = families.setdefault(name, {"type": family["type"],
                                                "help": family["help"], "lines": []})
            for key, value in family["samples"]:
                pairs = [*extra.items(), *_own_labels(key, extra)]
                merged["lines"].extend(_sample_lines(name, family, pairs, value))
    out = []
    for name in sorted(families):
        family = families[name]
        out.append(f"# HELP {name} {family['help']}")
        out.append(f"# TYPE {name} {family['type']}")
        out.extend(family["lines"])
    return "\n".join(out) + "\n"


def _own_labels(key: list[list[str]], extra: dict[str, str]) -> list[tuple[str, str]]:
    """A sample's own labels; one that the renderer adds too (a snapshot written by an
    older version) is kept as ``exported_<name>``, as Prometheus does on a clash."""
    return [(f"exported_{k}" if k in extra else k, v) for k, v in key]


def _sample_lines(name: str, family: dict[str, Any], pairs: list[tuple[str, str]],
                  value: Any) -> list[str]:
    if family["type"] != "histogram":
        return [f"{name}{_labels(pairs)} {_number(value)}"]
    lines, total = [], 0
    for bound, count in zip([*family["buckets"], float("inf")], value["counts"], strict=True):
        total += count
        lines.append(f"{name}_bucket{_labels([*pairs, ('le', _number(bound))])} {total}")
    lines.append(f"{name}_sum{_labels(pairs)} {_number(value['sum'])}")
    lines.append(f"{name}_count{_labels(pairs)} {total}")
    return lines
