import dataclasses
from pathlib import Path

import pytest
import torch

from mmlab.spec.ablations import ABLATIONS, apply_ablation, stages
from mmlab.spec.grid import BASE, Grid, expand, load_grid
from mmlab.spec.arch import ArchSpec
from mmlab.model import build
from mmlab.spec.presets import get_preset

S6 = get_preset("s6")
PAPER_GRID = Path(__file__).resolve().parents[2] / "studies" / "paper_ablations.toml"


def flat(spec: ArchSpec) -> dict[str, object]:
    """``to_dict()`` flattened to ``field`` / ``stages[i].field`` paths."""
    out = {k: v for k, v in spec.to_dict().items() if k != "stages"}
    for i, stage in enumerate(spec.to_dict()["stages"]):
        out.update({f"stages[{i}].{k}": v for k, v in stage.items()})
    return out


def changed(before: ArchSpec, after: ArchSpec) -> set[str]:
    a, b = flat(before), flat(after)
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


def every_stage(name: str) -> set[str]:
    return {f"stages[{i}].{name}" for i in range(3)}


# ablation, value, keys of to_dict() that must change (on s6), and nothing else
CASES = [
    ("no_wavelet", None, every_stage("wavelet_levels")),
    ("no_global", None, every_stage("global_ratio")),
    ("no_local", None, every_stage("local_ratio")),
    ("no_identity", None, every_stage("local_ratio")),
    ("wavelet_levels", 2, every_stage("wavelet_levels")),
    ("kernels", 9, every_stage("kernel")),
    ("kernels", (3, 5, 7), {"stages[0].kernel", "stages[2].kernel"}),  # s6 has (7, 5, 3)
    ("ssm_ratio", 1, {"ssm_ratio"}),
    ("d_state", 4, {"d_state"}),
    ("scan", "cross", {"scan"}),
    ("stages", 3, set()),  # already three stages
    ("ffn_ratio", 3.0, {"ffn_ratio"}),
    ("resolution", 256, {"resolution"}),
    ("width_mult", 0.5, every_stage("width")),
]


@pytest.mark.parametrize("name, value, expected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_ablation_changes_exactly_what_it_names(name, value, expected):
    assert changed(S6, apply_ablation(S6, name, value)) == expected


def test_every_registered_ablation_is_covered_and_described():
    assert {c[0] for c in CASES} == set(ABLATIONS)
    for name, ablation in ABLATIONS.items():
        assert ablation.name == name and ablation.description and "\n" not in ablation.description
        assert ablation.takes_value == (not name.startswith("no_"))


def test_ablation_values():
    assert [s.wavelet_levels for s in apply_ablation(S6, "no_wavelet").stages] == [0, 0, 0]
    no_identity = apply_ablation(S6, "no_identity")
    assert [s.identity_channels for s in no_identity.stages] == [0, 0, 0]
    assert [s.global_channels for s in no_identity.stages] == [s.global_channels for s in S6.stages]
    assert [s.global_channels for s in apply_ablation(S6, "no_global").stages] == [0, 0, 0]
    assert [s.local_channels for s in apply_ablation(S6, "no_local").stages] == [0, 0, 0]
    assert apply_ablation(S6, "width_mult", 0.5).widths == (96, 192, 224)
    assert apply_ablation(S6, "width_mult", 1.1).widths == (208, 424, 496)  # 211.2, 422.4, 492.8
    assert apply_ablation(get_preset("tiny"), "width_mult", 0.1).widths == (16, 16, 16)  # floor of 16


def test_four_stages_keep_the_last_three_and_the_final_stride():
    four = stages(S6, 4)
    assert four.num_stages == 4 and four.stem_stride == 8
    assert four.stages[1:] == S6.stages
    assert four.stages[0] == dataclasses.replace(S6.stages[0], width=96)
    assert four.stage_resolutions == (28, 14, 7, 4) and four.stage_resolutions[1:] == S6.stage_resolutions
    assert four.stem_channels == (24, 48, 96)
    assert stages(four, 3) == S6 and stages(S6, 3) == S6
    with pytest.raises(ValueError, match="stem_stride: 32 is not allowed"):
        stages(S6, 2)  # would need a stride-32 stem
    with pytest.raises(ValueError, match="must have 2 to 4 stages"):
        stages(S6, 5)


def test_four_stage_network_builds_and_ends_on_the_same_map():
    tiny = get_preset("tiny")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = build(stages(tiny, 4)).eval().forward_features(x)
        base = build(tiny).eval().forward_features(x)
    assert ours.shape == base.shape == (1, 64, 1, 1)


def test_ablations_compose_and_leave_the_input_alone():
    before = S6.to_dict()
    both = apply_ablation(apply_ablation(S6, "no_wavelet"), "kernels", 9)
    assert changed(S6, both) == every_stage("wavelet_levels") | every_stage("kernel")
    assert both == apply_ablation(apply_ablation(S6, "kernels", 9), "no_wavelet")
    assert S6.to_dict() == before
    # order matters where the second edit depends on the first: four stages need four kernels
    assert apply_ablation(stages(S6, 4), "kernels", (3, 3, 3, 3)).stages[0].kernel == 3
    with pytest.raises(ValueError, match="one per stage \\(4\\)"):
        apply_ablation(stages(S6, 4), "kernels", (3, 3, 3))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown ablation 'no_wavlet'; did you mean no_wavelet"):
        apply_ablation(S6, "no_wavlet")
    with pytest.raises(ValueError, match="wavelet_levels: missing value"):
        apply_ablation(S6, "wavelet_levels")
    with pytest.raises(ValueError, match="no_global: 1 is not allowed; no_global takes no value"):
        apply_ablation(S6, "no_global", 1)
    # an edit that makes an invalid spec raises the spec's own message
    with pytest.raises(ValueError, match=r"stages\[0\].wavelet_levels: 4 is not allowed"):
        apply_ablation(S6, "wavelet_levels", 4)
    with pytest.raises(ValueError, match=r"stages\[0\].kernel: 4 is not allowed"):
        apply_ablation(S6, "kernels", 4)
    with pytest.raises(ValueError, match="scan: 'diag' is not allowed"):
        apply_ablation(S6, "scan", "diag")
    with pytest.raises(ValueError, match="width_mult: 0 is not allowed"):
        apply_ablation(S6, "width_mult", 0)
    with pytest.raises(ValueError, match="stages: 3.5 is not allowed"):
        apply_ablation(S6, "stages", 3.5)


# ---- grids -------------------------------------------------------------------------------------
def grid(text: str, tmp_path: Path, name: str = "g") -> Grid:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_grid(path)


HEADER = 'base = "s6"\n'
WAVELET = '[[factor]]\nname = "wavelet"\nablation = "wavelet_levels"\nvalues = [0, 1, 2]\n'
BRANCH = '[[factor]]\nname = "branch"\nablation = ["no_global", "no_local"]\n'


def test_grid_defaults_and_base_file(tmp_path):
    g = grid(HEADER + WAVELET, tmp_path, name="mine")
    assert (g.name, g.base, g.base_source, g.mode) == ("mine", S6, "s6", "one-at-a-time")
    assert (g.measure, g.signal, g.data, g.seeds) == (("params", "macs"), None, "synthetic", (0,))
    assert g.factors[0].levels == (0, 1, 2) and g.factors[0].ablation == "wavelet_levels"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "arch.toml").write_text(S6.replace(d_state=2).to_toml())
    g = grid('name = "x"\nbase = "specs/arch.toml"\n' + WAVELET, tmp_path)
    assert g.name == "x" and g.base.d_state == 2


REJECTED = [
    (HEADER + "sede = 1\n" + WAVELET, "g.toml: grid: unknown key 'sede' .*allowed: name, base, mode"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "no_wavelet"\nvalue = [1]\n', "factor\\[0\\]: unknown key 'value' \\(did you mean 'values'\\?\\); allowed: name, ablation, field, values"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavlet_levels"\nvalues = [1]\n', "factor\\[0\\].ablation: unknown ablation 'wavlet_levels'; did you mean wavelet_levels"),
    (HEADER + '[[factor]]\nname = "b"\nablation = ["no_global", "no_locl"]\n', "unknown ablation 'no_locl'; did you mean no_local"),
    (HEADER + '[[factor]]\nname = "b"\nablation = ["no_global", "kernels"]\n', "'kernels' is not allowed in a list; it takes a value"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavelet_levels"\n', "factor\\[0\\].values: missing"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = []\n', "values: \\[\\] is not allowed"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = 1\n', "values: 1 is not allowed"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = [1, 1]\n', "values: 1 is listed twice"),
    (HEADER + '[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = [{a = 1}]\n', "a level is a value or an array, not a table"),
    (HEADER + '[[factor]]\nname = "b"\nablation = ["no_global"]\nvalues = [1]\n', "values: not allowed with value-less ablations"),
    (HEADER + '[[factor]]\nname = "d"\nfield = "dstate"\nvalues = [1]\n', "field: 'dstate' is not allowed; allowed: resolution"),
    (HEADER + '[[factor]]\nname = "d"\nfield = "stages[0].kernal"\nvalues = [1]\n', "field: 'stages\\[0\\].kernal' is not allowed"),
    (HEADER + '[[factor]]\nname = "d"\nfield = "d_state"\nablation = "no_local"\nvalues = [1]\n', "exactly one of ablation or field"),
    (HEADER + '[[factor]]\nname = "a b"\nfield = "d_state"\nvalues = [1]\n', "name: 'a b' is not allowed"),
    (HEADER + WAVELET + WAVELET, "factor\\[1\\].name: 'wavelet' is used twice"),
    (HEADER, "factor: missing"),
    ('base = "s7"\n' + WAVELET, "base: unknown preset 's7'"),
    ('base = "nothere.toml"\n' + WAVELET, "base: spec file .* does not exist"),
    (HEADER + 'mode = "random"\n' + WAVELET, "mode: 'random' is not allowed; allowed: one-at-a-time, factorial"),
    (HEADER + 'measure = ["flops"]\n' + WAVELET, "measure: 'flops' is not allowed"),
    (HEADER + 'signal = "synflow"\n' + WAVELET, "signal: 'synflow' is not allowed here; measure does not list 'signal'"),
    (HEADER + 'seeds = ["a"]\n' + WAVELET, "seeds: 'a' is not allowed"),
    (HEADER + "base = 1\n", "Cannot overwrite a value"),  # not even TOML
]


@pytest.mark.parametrize("text, message", REJECTED, ids=[f"case{i}" for i in range(len(REJECTED))])
def test_grid_parsing_rejects(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        grid(text, tmp_path)


def test_one_at_a_time_expansion(tmp_path):
    field = '[[factor]]\nname = "k0"\nfield = "stages[-1].kernel"\nvalues = [3, 5]\n'
    variants = expand(grid(HEADER + WAVELET + BRANCH + field, tmp_path)).variants
    labels = [v.label for v in variants]
    # wavelet=1 and k0=3 are the base: merged into it
    assert labels == ["base", "wavelet=0", "wavelet=2", "branch=no_global", "branch=no_local", "k0=5"]
    assert variants[0].aliases == ("wavelet=1", "k0=3") and variants[0].spec == S6
    assert variants[0].factors == {"wavelet": BASE, "branch": BASE, "k0": BASE}
    assert variants[1].factors == {"wavelet": 0, "branch": BASE, "k0": BASE}
    assert variants[3].spec == apply_ablation(S6, "no_global")
    assert variants[5].spec.stages[2].kernel == 5
    assert len({v.spec.key for v in variants}) == len(variants)


def test_factorial_expansion_and_dedup(tmp_path):
    text = HEADER + 'mode = "factorial"\n' + WAVELET + BRANCH
    variants = expand(grid(text, tmp_path)).variants
    assert len(variants) == 6 and "base" not in [v.label for v in variants]
    assert variants[0].label == "wavelet=0 branch=no_global"
    assert variants[0].factors == {"wavelet": 0, "branch": "no_global"}
    assert variants[0].spec == apply_ablation(apply_ablation(S6, "wavelet_levels", 0), "no_global")
    # "base" is a level; no_wavelet then wavelet_levels=1 is the same spec as base then 1
    text = HEADER + 'mode = "factorial"\n[[factor]]\nname = "a"\nablation = ["base", "no_wavelet"]\n'
    text += '[[factor]]\nname = "w"\nablation = "wavelet_levels"\nvalues = [0, 1]\n'
    variants = expand(grid(text, tmp_path)).variants
    assert [(v.label, v.aliases) for v in variants] == [("w=0", ("a=no_wavelet w=0",)), ("w=1", ("a=no_wavelet w=1",))]
    assert variants[1].spec == S6


def test_invalid_combinations_are_reported_together_before_anything_runs(tmp_path):
    # expand only edits specs: one error lists every impossible combination, so a runner that
    # expands first never starts work on a grid that cannot finish
    text = HEADER + 'mode = "factorial"\n'
    text += '[[factor]]\nname = "stages"\nablation = "stages"\nvalues = [3, 4]\n'
    text += '[[factor]]\nname = "kernels"\nablation = "kernels"\nvalues = [[3, 3, 3], 5]\n'
    text += '[[factor]]\nname = "scan"\nablation = "scan"\nvalues = ["bidi", "diag"]\n'
    g = grid(text, tmp_path)
    with pytest.raises(ValueError) as info:
        expand(g)
    message = str(info.value)
    assert message.startswith("g: 5 of 8 combinations are invalid")
    assert "stages=4 kernels=3,3,3 scan=bidi: kernels: (3, 3, 3) is not allowed" in message
    assert "stages=3 kernels=5 scan=diag: scan: 'diag' is not allowed" in message
    assert message.count("\n  ") == 5
    skipped = expand(g, on_invalid="skip")
    assert [v.label for v in skipped.variants] == [
        "stages=3 kernels=3,3,3 scan=bidi",
        "stages=3 kernels=5 scan=bidi",
        "stages=4 kernels=5 scan=bidi",
    ]
    assert len(skipped.skipped) == 5
    assert skipped.skipped[0].factors == {"stages": 3, "kernels": (3, 3, 3), "scan": "diag"}
    with pytest.raises(ValueError, match="on_invalid: 'ignore' is not allowed"):
        expand(g, on_invalid="ignore")


def test_paper_ablations_grid():
    g = load_grid(PAPER_GRID)
    assert (g.name, g.base, g.mode) == ("paper_ablations", S6, "one-at-a-time")
    assert g.measure == ("params", "macs", "macs_paper", "latency", "signal")
    assert g.signal is None  # the project's default signal, resolved when the grid runs
    levels = {f.name: f.levels for f in g.factors}
    assert levels == {
        "wavelet": (0, 1, 2),
        "branch": ("no_global", "no_local", "no_identity"),
        "kernels": ((3, 3, 3), (5, 5, 5), (7, 7, 7), (7, 5, 3)),
        "ssm_ratio": (1, 2),
        "d_state": (1, 4),
        "scan": ("forward", "bidi", "cross"),
        "stages": (3, 4),
        "resolution": (192, 224, 256),
    }
    expansion = expand(g)  # raises if any level were invalid
    variants = expansion.variants
    assert len(variants) == 16 and not expansion.skipped
    assert variants[0].label == "base" and variants[0].spec == S6
    assert variants[0].aliases == (
        "wavelet=1", "kernels=7,5,3", "ssm_ratio=2", "d_state=1", "scan=bidi", "stages=3", "resolution=224"
    )
    seen = {label for v in variants for label in (v.label, *v.aliases)}
    for name, values in levels.items():
        for value in values:
            assert f"{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}" in seen
    four = next(v.spec for v in variants if v.label == "stages=4")
    assert four.num_stages == 4 and four.stem_stride == 8 and four.stages[1:] == S6.stages
