"""GET /metrics' text: the metric names dashboards and autoscalers use, and label values escaped."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Metrics

# What the server exports (docs/deploy.md's autoscaler reads assistant_live_sessions).
FAMILIES = {
    "assistant_live_sessions": "gauge",
    "assistant_capacity_left": "gauge",
    "assistant_step_ms": "histogram",
    "assistant_tick_late_ms": "histogram",
    "assistant_frame_wait_ms": "histogram",
    "assistant_response_gap_ms": "histogram",
    "assistant_server_overhead_ms": "histogram",
    "assistant_sessions": "counter",
    "assistant_session_frames": "counter",
    "assistant_refused": "counter",
    "assistant_client_cap_refused": "counter",
    "assistant_underruns": "counter",
    "assistant_drops": "counter",
    "assistant_barge_ins": "counter",
    "assistant_skipped_ticks": "counter",
    "assistant_slow_clients": "counter",
    "assistant_errors": "counter",
    "assistant_captions_dropped": "counter",
    "assistant_recording_failures": "counter",
}


def metrics() -> Metrics:
    m = Metrics()
    m.gauge("live_sessions", "Sessions in progress.", lambda: 3)
    m.gauge("capacity_left", "Sessions that can still join.", lambda: 5)
    return m


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_exported_names_and_types_stay_what_dashboards_read():
    m = metrics()
    m.inc("sessions_total")
    m.inc("errors", label="invalid_json")
    exported = families(m.render())
    assert {name: f.type for name, f in exported.items()} == FAMILIES
    samples = {(s.name, tuple(s.labels.items())): s.value for f in exported.values() for s in f.samples}
    assert samples[("assistant_sessions_total", ())] == 1
    assert samples[("assistant_errors_total", (("code", "invalid_json"),))] == 1
    assert samples[("assistant_live_sessions", ())] == 3  # read when rendered
    assert "assistant_sessions_total 1.0\n" in m.render()  # the line a scraper (and bench server) reads


def test_a_label_value_with_quotes_backslashes_and_newlines_is_escaped():
    m = metrics()
    code = 'bad"code\\with\nnewline'
    m.inc("errors", label=code)
    m.inc("errors", label=code)
    (errors,) = [s for s in families(m.render())["assistant_errors"].samples if s.name.endswith("_total")]
    assert errors.labels == {"code": code} and errors.value == 2
    assert m.value("errors", code) == 2 and m.value("errors", "other") == 0


def test_histograms_count_into_their_buckets_and_counters_read_back():
    m = metrics()
    for ms in (0.4, 3.0, 3.5, 700.0):
        m.observe("step_ms", ms)
    m.inc("drops", 0.5)
    buckets = {
        s.labels["le"]: s.value for s in families(m.render())["assistant_step_ms"].samples if "le" in s.labels
    }
    assert (buckets["1.0"], buckets["5.0"], buckets["500.0"], buckets["+Inf"]) == (1, 3, 3, 4)
    assert m.value("drops") == 0.5 and m.value("underruns") == 0
