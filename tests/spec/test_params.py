"""The parameter-count formula (mmlab.spec.params) against the network the builder makes.

Every check builds the network on the meta device (shapes only) and compares the formula with
``sum(p.numel() for p in model.parameters())``, part by part, so a wrong term names its part.
"""

import pytest
import torch

import mmlab
from mmlab.spec import ArchSpec, SearchSpace, StageSpec, param_breakdown, param_count
from mmlab.spec.presets import PAPER_PRESETS, PRESETS, get_preset
from tests.conftest import read_tsv


def numel(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def built_counts(spec: ArchSpec) -> tuple[dict[str, int], int, int]:
    """Per-part counts of the built network (keyed like param_breakdown), its total and trainable total."""
    with torch.device("meta"):
        model = mmlab.build(spec)
    parts = {"stem": numel(model.stem)}
    for i, stage in enumerate(model.stages):
        if i:
            parts[f"stage{i + 1}.downsample"] = numel(stage.downsample)
        parts[f"stage{i + 1}.blocks"] = numel(stage.blocks)
    parts["head"] = numel(model.head)
    return parts, numel(model), numel(model, trainable_only=True)


def assert_formula_matches(spec: ArchSpec) -> None:
    parts, total, trainable = built_counts(spec)
    assert param_breakdown(spec) == parts, spec.to_json()
    assert param_count(spec) == total, spec.to_json()  # nothing outside the parts
    assert param_count(spec, trainable_only=True) == trainable, spec.to_json()


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets(name):
    assert_formula_matches(PRESETS[name])


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_match_the_authors_counts(name):
    row = {r["preset"]: r for r in read_tsv("presets.tsv")}[name]
    assert param_count(PRESETS[name]) == int(row["params_all"])
    assert param_count(PRESETS[name], trainable_only=True) == int(row["params_trainable"])


def test_twenty_random_specs_of_the_default_space():
    specs = SearchSpace.load("default").sample(20, seed=13)
    assert len(specs) == 20
    # The draw must exercise the branches the formula distinguishes, or this test proves less.
    assert {s.scan for s in specs} == {"forward", "bidi", "cross"}
    assert {s.wavelet for s in specs} == {"db1", "db2"}
    assert {st.wavelet_levels for s in specs for st in s.stages} == {0, 1, 2}
    assert any(st.global_channels == 0 for s in specs for st in s.stages)
    for spec in specs:
        assert_formula_matches(spec)


def test_random_specs_of_the_tiny_space():
    for spec in SearchSpace.load("tiny").sample(6, seed=5):
        assert_formula_matches(spec)


TINY = get_preset("tiny")
T2 = get_preset("t2")


def _four_stages() -> ArchSpec:
    stages = (*TINY.stages, StageSpec(width=96, depth=2, kernel=5, global_ratio=0.6, local_ratio=0.2, wavelet_levels=2))
    return TINY.replace(stages=stages, stem_stride=4)


EDGE_SPECS = {
    # the non-preset spec: cross scan, d_state 4, two wavelet levels
    "cross-dstate4-level2": T2.replace(scan="cross", d_state=4).replace_stage(0, wavelet_levels=2),
    "forward-level3": TINY.replace(scan="forward").replace_stage(1, wavelet_levels=3),
    "two-stages": TINY.replace(stages=TINY.stages[:2], stem_stride=8),
    "four-stages-stride4": _four_stages(),
    "kernels-1-5-15": TINY.replace_stage(0, kernel=1).replace_stage(1, kernel=5).replace_stage(2, kernel=15),
    "no-global-no-local": TINY.replace_stage(0, global_ratio=0.0, local_ratio=0.0),
    "all-global": TINY.replace_stage(1, global_ratio=1.0, local_ratio=0.0),
    "ssm-only": TINY.replace_stage(0, wavelet_levels=0).replace_stage(2, wavelet_levels=0),
    # width 29 feeds the next downsample an SE on 4·29 channels, reduced to 29 → 32 (not 24)
    "odd-widths-odd-ratios": TINY.replace(ssm_ratio=1.5, ffn_ratio=1.5).replace_stage(1, width=29, global_ratio=0.55),
    "db2": TINY.replace(wavelet="db2"),
    "sym4": TINY.replace(wavelet="sym4").replace_stage(0, wavelet_levels=2),
    "bior3.5": TINY.replace(wavelet="bior3.5"),
    "no-head-one-channel": TINY.replace(num_classes=0, in_chans=1),
}


@pytest.mark.parametrize("name", list(EDGE_SPECS))
def test_edge_specs(name):
    assert_formula_matches(EDGE_SPECS[name])


def test_parts_follow_the_stages():
    assert list(param_breakdown(_four_stages())) == [
        "stem", "stage1.blocks", "stage2.downsample", "stage2.blocks", "stage3.downsample", "stage3.blocks",
        "stage4.downsample", "stage4.blocks", "head"]
    assert param_breakdown(EDGE_SPECS["no-head-one-channel"])["head"] == 0


def test_frozen_filters_are_the_only_untrainable_parameters():
    # 4·g channels × (k² analysis + k² synthesis) per block with a wavelet level: db1 k=2, db2 k=4.
    ssm_only = EDGE_SPECS["ssm-only"]
    g, depth = ssm_only.stages[1].global_channels, ssm_only.stages[1].depth
    assert param_count(ssm_only) - param_count(ssm_only, trainable_only=True) == depth * 4 * g * (4 + 4)
    db2 = ssm_only.replace(wavelet="db2")
    assert param_count(db2) - param_count(db2, trainable_only=True) == depth * 4 * g * (16 + 16)
    no_wavelet = ssm_only.replace_stage(1, wavelet_levels=0)
    assert param_count(no_wavelet) == param_count(no_wavelet, trainable_only=True)
