"""Fuzzed specs: random spec dictionaries, in range and out of it, either build a network whose
forward pass has the right output shape or raise ``ValueError`` naming the field — never another
exception, never a hang. Models stay small (narrow, shallow, <= 64 px), so 40 examples take seconds."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmlab.model import build
from mmlab.spec.arch import ArchSpec

NET_FIELDS = {"resolution", "in_chans", "num_classes", "ssm_ratio", "d_state", "scan", "wavelet", "ffn_ratio",
              "drop_path", "stem_stride"}
STAGE_FIELDS = {"width", "depth", "kernel", "global_ratio", "local_ratio", "wavelet_levels"}
JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.just([1]), st.just({"a": 1}),
                 st.just(math.nan), st.just(-math.inf))


def field(good, bad=JUNK):
    """In range 11 times in 12 (so about a quarter of the specs are whole networks), else out of
    range or of the wrong type."""
    return st.integers(0, 11).flatmap(lambda k: bad if k == 11 else good)




def rarely(key):
    """``{key: 1}`` once in 12 draws (an unknown key), else nothing."""
    return st.integers(0, 11).map(lambda k: {key: 1} if k == 11 else {})


def merged(required, optional, unknown):
    return st.tuples(st.fixed_dictionaries(required, optional=optional), rarely(unknown)).map(lambda t: {**t[0], **t[1]})


STAGE = merged(
    {"width": field(st.sampled_from([16, 24, 32, 48]), st.one_of(JUNK, st.integers(-16, 15))),
     "depth": field(st.integers(1, 2), st.one_of(JUNK, st.integers(-2, 0)))},
    {
        "kernel": field(st.sampled_from([3, 5]), st.one_of(JUNK, st.integers(-3, 4))),
        "global_ratio": field(st.floats(0, 0.8), st.one_of(JUNK, st.floats(-2, -0.01), st.floats(1.01, 3))),
        "local_ratio": field(st.floats(0, 0.2), st.one_of(JUNK, st.floats(-2, -0.01), st.floats(1.01, 3))),
        "wavelet_levels": field(st.integers(0, 2), st.one_of(JUNK, st.integers(-3, -1), st.integers(4, 9))),
    },
    "colour",
)
SPEC = merged(
    {"stages": field(st.lists(STAGE, min_size=2, max_size=4),
                     st.one_of(JUNK, st.lists(STAGE, min_size=0, max_size=1), st.lists(STAGE, min_size=5, max_size=5)))},
    {
        "resolution": field(st.sampled_from([32, 48]), st.one_of(JUNK, st.integers(-64, 15))),
        "in_chans": field(st.integers(1, 3), st.one_of(JUNK, st.integers(-3, 0))),
        "num_classes": field(st.integers(1, 12), st.one_of(JUNK, st.integers(-3, 0))),
        "ssm_ratio": field(st.sampled_from([1.0, 2.0]), st.one_of(JUNK, st.floats(-2, 0))),
        "d_state": field(st.integers(1, 4), st.one_of(JUNK, st.integers(-3, 0))),
        "scan": field(st.sampled_from(["forward", "bidi", "cross"]), st.one_of(JUNK, st.just("sideways"))),
        "wavelet": field(st.sampled_from(["db1", "db2", "haar"]), st.one_of(JUNK, st.just("nope"), st.just("morl"))),
        "ffn_ratio": field(st.sampled_from([1.0, 2.0]), st.one_of(JUNK, st.floats(-2, 0))),
        "drop_path": field(st.floats(0, 0.3), st.one_of(JUNK, st.floats(-1, -0.01), st.floats(1.0, 2))),
        "stem_stride": field(st.sampled_from([4, 8, 16]), st.one_of(JUNK, st.sampled_from([0, 2, 3, 32]))),
    },
    "extra_field",
)


BUILT: list[str] = []


def named_field(message: str) -> str:
    """The field a ValueError names: ``width: ...``, ``stages[1].width: ...`` or ``stages: ...``."""
    head = message.split(":", 1)[0]
    return head.rsplit(".", 1)[-1].split("[", 1)[0]


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPEC)
def test_a_random_spec_builds_or_names_the_field(data):
    try:
        spec = ArchSpec.from_dict(data)
        model = build(spec).eval()
    except ValueError as err:
        name = named_field(str(err))
        assert name in NET_FIELDS | STAGE_FIELDS | {"stages", "spec", "stage"}, str(err)
        assert "not allowed" in str(err) or "missing" in str(err) or "unknown key" in str(err), str(err)
        return
    BUILT.append(spec.key)
    with torch.no_grad():
        out = model(torch.randn(2, spec.in_chans, spec.resolution, spec.resolution))
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()


def test_the_fuzzing_builds_networks_too():
    """The test above is not only about errors: a fair share of its examples are whole networks."""
    if not BUILT:
        test_a_random_spec_builds_or_names_the_field()
    assert len(set(BUILT)) >= 5
