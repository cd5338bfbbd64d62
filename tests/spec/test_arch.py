import json

import pytest

from mmlab.spec import ArchSpec, StageSpec, load_spec
from mmlab.spec.presets import PAPER_PRESETS, PRESETS, get_preset
from tests.conftest import read_tsv


def test_splits_match_reference_table():
    rows = read_tsv("preset_stages.tsv")
    assert len(rows) == 18
    for row in rows:
        split = PRESETS[row["preset"]].splits()[int(row["stage"]) - 1]
        for column in ("dim", "depth", "kernel", "resolution", "global_ch", "local_ch", "identity_ch", "d_inner", "dt_rank"):
            ours = split["width" if column == "dim" else column]
            assert ours == int(row[column]), (row["preset"], row["stage"], column)


@pytest.mark.parametrize(
    "width, ratio, expected",
    [(144, 0.8, 112), (272, 0.7, 192), (368, 0.6, 224), (10, 0.8, 0), (16, 0.3, 0), (16, 0.5, 16), (24, 1.0, 16)],
)
def test_global_channel_rounding(width, ratio, expected):
    # int() truncates, then nearest multiple of 16 with remainder 8 going up; where that would
    # exceed the width, the largest multiple of 16 that fits.
    assert StageSpec(width=width, depth=1, global_ratio=ratio, local_ratio=0.0).global_channels == expected


def test_local_is_clamped_and_identity_is_the_rest():
    stage = StageSpec(width=176, depth=1, global_ratio=0.8, local_ratio=0.2)  # t4 stage 1
    assert (stage.global_channels, stage.local_channels, stage.identity_channels) == (144, 32, 0)
    stage = StageSpec(width=64, depth=1, global_ratio=0.5, local_ratio=0.9)
    assert (stage.global_channels, stage.local_channels, stage.identity_channels) == (32, 32, 0)


def test_drop_path_is_linear_over_all_blocks():
    rates = get_preset("b1").block_drop_path
    flat = [r for stage in rates for r in stage]
    assert [len(s) for s in rates] == [2, 3, 2]
    assert flat[0] == 0.0 and flat[-1] == pytest.approx(0.03)
    assert flat[1] == pytest.approx(0.005)


def test_stage_resolutions_use_ceil():
    assert get_preset("s6").stage_resolutions == (14, 7, 4)
    assert get_preset("t2").replace(resolution=200).stage_resolutions == (13, 7, 4)
    assert get_preset("t2").replace(stem_stride=8).stage_resolutions == (24, 12, 6)
    assert get_preset("t2").replace(stem_stride=4).stem_channels == (72, 144)


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trips(name):
    spec = PRESETS[name]
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_toml(spec.to_toml()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).key == spec.key
    assert hash(spec) == hash(ArchSpec.from_json(spec.to_json()))


def test_key_is_stable_and_short():
    spec = get_preset("t2")
    assert len(spec.key) == 12
    assert spec.key == "9de8d1c38d88"  # pinned: a change of the canonical JSON would orphan every cache and study
    assert spec.key != spec.replace(d_state=2).key
    # 1 and 1.0 are the same ratio, hence the same spec.
    assert spec.replace(ssm_ratio=2) == spec


def test_keys_are_unique_across_presets():
    assert len({s.key for s in PRESETS.values()}) == len(PRESETS)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(scan="diagonal"), "scan"),
        (dict(d_state=0), "d_state"),
        (dict(stem_stride=2), "stem_stride"),
        (dict(wavelet="morl"), "wavelet"),
        (dict(resolution=8), "resolution"),
        (dict(drop_path=1.0), "drop_path"),
        (dict(ssm_ratio=0.0), "ssm_ratio"),
        (dict(ffn_ratio=-1.0), "ffn_ratio"),
        (dict(num_classes=-1), "num_classes"),
        (dict(d_state=1.5), "d_state"),
    ],
)
def test_network_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field}: .* is not allowed; "):
        get_preset("t2").replace(**change)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(kernel=4), "kernel"),
        (dict(kernel=17), "kernel"),
        (dict(width=4), "width"),
        (dict(depth=0), "depth"),
        (dict(global_ratio=1.5), "global_ratio"),
        (dict(local_ratio=-0.1), "local_ratio"),
        (dict(wavelet_levels=4), "wavelet_levels"),
    ],
)
def test_stage_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^stages\[1\]\.{field}: "):
        get_preset("t2").replace_stage(1, **change)


def test_stage_count_limits():
    stage = StageSpec(width=32, depth=1)
    with pytest.raises(ValueError, match="^stages: "):
        ArchSpec(stages=(stage,))
    with pytest.raises(ValueError, match="^stages: "):
        ArchSpec(stages=(stage,) * 5)
    assert ArchSpec(stages=(stage,) * 4).num_stages == 4


def test_from_dict_rejects_unknown_keys():
    data = get_preset("t2").to_dict()
    with pytest.raises(ValueError, match="unknown key"):
        ArchSpec.from_dict({**data, "depthz": 3})
    data["stages"][0]["kernal"] = 3
    with pytest.raises(ValueError, match=r"stages\[0\]: 'kernal'"):
        ArchSpec.from_dict(data)


def test_load_spec_files(tmp_path):
    spec = get_preset("s6")
    (tmp_path / "a.toml").write_text(spec.to_toml())
    (tmp_path / "a.json").write_text(spec.to_json())
    assert load_spec(tmp_path / "a.toml") == spec
    assert load_spec(str(tmp_path / "a.json")) == spec
    assert load_spec("S6") == spec
    bad = spec.to_dict()
    bad["stages"][2]["kernel"] = 6
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json: stages\[2\]\.kernel: 6"):
        load_spec(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_unknown_preset_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown preset 't3'.*did you mean"):
        load_spec("t3")


def test_paper_presets_share_the_reference_settings():
    for name in PAPER_PRESETS:
        spec = PRESETS[name]
        assert (spec.ssm_ratio, spec.d_state, spec.scan, spec.wavelet, spec.stem_stride) == (2.0, 1, "bidi", "db1", 16)
        assert tuple(s.kernel for s in spec.stages) == (7, 5, 3)
