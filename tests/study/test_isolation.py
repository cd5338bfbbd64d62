"""Timing isolation (the machine lock), disturbed timings, and cache entries that cannot go stale or
be malformed."""

import json
import threading
import time

import pytest

import mmlab.meter.measure as measure_mod
import mmlab.study.candidate as candidate
from mmlab.meter.cache import MeasurementCache, cache_key
from mmlab.meter.measure import cached_counts
from mmlab.signals.registry import ScoreSettings
from mmlab.spec import get_preset
from mmlab.study.candidate import EvalPlan, MachineLock, evaluate, signal_key

TINY = get_preset("tiny")
PLAN = EvalPlan(threads=1, timing_s=0.05, signals=("params",), score=ScoreSettings(data="synthetic"))


def test_exclusive_waits_for_shared_and_newcomers_wait_for_a_queued_timing(tmp_path):
    a, b, c = (MachineLock("cpu", tmp_path) for _ in range(3))  # three "processes" (own files)
    events = []

    def timing():
        with b.exclusive():
            events.append("timing")
            time.sleep(0.3)
        events.append("timing done")

    def newcomer():
        with c.shared():
            events.append("newcomer")

    with a.shared():
        with a.shared():  # nested shared use is free
            pass
        t1 = threading.Thread(target=timing)
        t1.start()
        time.sleep(0.3)
        t2 = threading.Thread(target=newcomer)  # arrives while the timing waits: must go after it
        t2.start()
        time.sleep(0.3)
        events.append("shared done")
        with pytest.raises(RuntimeError, match="holds the shared lock"):
            with a.exclusive():
                pass
    t1.join(10)
    t2.join(10)
    assert events == ["shared done", "timing", "timing done", "newcomer"]


def test_a_disturbed_timing_is_retaken_then_flagged_and_retaken_when_asked_again(tmp_path, monkeypatch):
    cache = MeasurementCache(tmp_path)
    calls = []
    real = candidate.measure
    monkeypatch.setattr(candidate, "measure", lambda spec, **kw: calls.append(kw["use_cache"]) or real(spec, **kw))
    monkeypatch.setattr(candidate, "SPREAD_LIMIT", -1.0)  # every timing counts as disturbed
    record = evaluate(TINY, PLAN, cache)
    assert calls == [True, False, False]  # the first, then two retakes
    assert record.timing["timing_disturbed"] is True and record.timing["timing_tries"] == 3
    for key in ("timing_spread", "timing_load1", "timing_other_cpu"):
        assert isinstance(record.timing[key], float)
    to_row = record.to_row()
    assert to_row["timing_disturbed"] is True  # stored with the trial, never silently
    calls.clear()
    again = evaluate(TINY, PLAN, cache)  # the cache holds it flagged: taken again
    assert calls == [True, False, False] and again.timing["timing_disturbed"] is True
    # A quiet machine: one timing, not flagged, and served from the cache afterwards.
    monkeypatch.setattr(candidate, "SPREAD_LIMIT", 1e9)
    monkeypatch.setattr(candidate, "OTHER_CPU_LIMIT", 1e9)
    calls.clear()
    quiet = evaluate(TINY, PLAN, cache)
    assert calls == [True, False] and quiet.timing["timing_disturbed"] is False  # the flagged hit, then one
    calls.clear()
    hit = evaluate(TINY, PLAN, cache)
    assert calls == [True] and hit.timing["timing_tries"] == 0
    assert hit.timing["latency_ms"] == quiet.timing["latency_ms"]


@pytest.mark.parametrize("entry", ["[]", "1", "null", "true", '"text"', "{}", '{"params": "many"}',
                                   '{"params": 1, "params_trainable": 1, "macs": NaN, "macs_paper": 1}',
                                   '{"params": true, "params_trainable": 1, "macs": 1, "macs_paper": 1}', "{trunc"])
def test_a_malformed_cache_entry_is_recomputed_and_replaced(tmp_path, entry):
    cache = MeasurementCache(tmp_path)
    good = cached_counts(TINY, cache)
    files = list(tmp_path.rglob("counts-*.json"))
    assert len(files) == 1
    files[0].write_text(entry)
    again = cached_counts(TINY, cache)
    assert again == good and cache.malformed == 1
    assert json.loads(files[0].read_text()) == good  # the fresh figure replaced it


def test_malformed_timing_and_signal_entries_are_recomputed(tmp_path):
    cache = MeasurementCache(tmp_path)
    first = evaluate(TINY, PLAN, cache)
    for path in tmp_path.rglob("*.json"):
        if path.name.startswith(("timing-", "signal-")):
            path.write_text('{"latency_ms": "fast", "signal": [1]}')
    again = evaluate(TINY, PLAN, cache)
    assert cache.malformed == 2
    assert again.signals == first.signals and again.timing["latency_ms"] > 0


def test_a_cached_figure_is_recomputed_after_a_change_of_code(tmp_path, monkeypatch):
    cache = MeasurementCache(tmp_path)
    cached_counts(TINY, cache)
    cached_counts(TINY, cache)
    assert (cache.hits, cache.misses) == (1, 1)
    real = measure_mod.code_digest
    monkeypatch.setattr(measure_mod, "code_digest", lambda *p: "0" * 12 if not p else real(*p))
    cached_counts(TINY, cache)
    assert cache.misses == 2  # another digest, another key: measured again
    settings = ScoreSettings(data="synthetic")
    before = signal_key(TINY, "params", settings)
    monkeypatch.setattr(candidate, "code_digest", lambda *p: "f" * 12)
    assert signal_key(TINY, "params", settings) != before


def test_cache_keys_name_their_kind():
    assert cache_key({"kind": "counts", "spec": "x"}).startswith("counts-")
    assert cache_key({"spec": "x"}).isalnum()
