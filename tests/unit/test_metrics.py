"""The metrics exposition stays valid whatever a process records: the renderer's own
labels are reserved, counters exist before their first event, and Prometheus's parser
reads every rendering."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chronocore import metrics


def test_it_refuses_a_label_the_renderer_adds() -> None:
    registry = metrics.Registry()
    with pytest.raises(ValueError, match="reserved"):
        registry.inc("chronosync_recoveries_total", "help", kind="worker_lost")
    with pytest.raises(ValueError, match="reserved"):
        registry.set("chronosync_worker_slots", "help", 1, node="worker-1")


def test_an_older_node_s_clashing_label_is_exported_not_duplicated() -> None:
    old_snapshot = {"chronosync_recoveries_total": {
        "type": "counter", "help": "Recovered.", "buckets": [],
        "samples": [[[["kind", "worker_lost"]], 2.0]]}}
    text = metrics.render([({"node": "c-1", "kind": "coordinator"}, old_snapshot)])
    [family] = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"node": "c-1", "kind": "coordinator",
                                        "exported_kind": "worker_lost"}


def test_a_declared_counter_renders_at_zero_for_each_label_set() -> None:
    registry = metrics.Registry()
    registry.declare_counter("chronosync_things_total", "Things.", {"reason": "a"},
                             {"reason": "b"})
    registry.declare_counter("chronosync_plain_total", "Plain.")
    text = metrics.render([({"node": "n", "kind": "worker"}, registry.snapshot())])
    values = {(s.name, s.labels.get("reason")): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("chronosync_things_total", "a")] == 0
    assert values[("chronosync_things_total", "b")] == 0
    assert values[("chronosync_plain_total", None)] == 0


def test_process_cpu_seconds_is_a_counter() -> None:
    text = metrics.render([({"node": "n", "kind": "worker"}, metrics.Registry().snapshot())])
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["process_cpu_seconds"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
