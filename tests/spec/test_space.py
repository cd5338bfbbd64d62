import optuna
import pytest

from mmlab.spec.presets import PAPER_PRESETS, get_preset
from mmlab.spec.space import DEFAULT_SPACE, SearchSpace, space_names

TINY_SPACE = "tiny"


def test_default_space_contains_every_preset():
    space = SearchSpace.load()
    for name in PAPER_PRESETS:
        params = space.params_for(get_preset(name))
        assert params is not None, name
        assert space.build(params) == get_preset(name)


def test_every_parameter_is_suggested_on_every_trial():
    space = SearchSpace.load(TINY_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = {p.name for p in space.all_params() if not p.fixed}
    for _ in range(20):
        trial = study.ask()
        space.suggest(trial)
        assert set(trial.params) == names


def test_local_share_is_sampled_within_what_global_leaves():
    space = SearchSpace.load()
    for spec in space.sample(40, seed=3):
        for stage in spec.stages:
            assert stage.global_ratio + stage.local_ratio <= 1.0 + 1e-9
            assert stage.global_channels + stage.local_channels <= stage.width


def test_sampling_is_seeded():
    space = SearchSpace.load(TINY_SPACE)
    assert [s.key for s in space.sample(5, seed=1)] == [s.key for s in space.sample(5, seed=1)]
    assert [s.key for s in space.sample(5, seed=1)] != [s.key for s in space.sample(5, seed=2)]


def test_suggested_floats_are_clean():
    space = SearchSpace.load()
    ratios = {s.global_ratio for spec in space.sample(30) for s in spec.stages}
    assert ratios <= {round(0.1 * i, 6) for i in range(10)}


def test_smallest_member():
    space = SearchSpace.load()
    small = space.smallest()
    assert small.widths == (96, 192, 256) and small.resolution == 128
    assert all(s.wavelet_levels == 0 and s.global_ratio == 0.0 for s in small.stages)


@pytest.mark.parametrize(
    "text, message",
    [
        ("resolutoin = [64]\n[[stage]]\nwidth = 16\ndepth = 1\n", "unknown key 'resolutoin'.*did you mean 'resolution'"),
        ("[[stage]]\nwidth = 16\ndepth = 1\nkernal = 3\n", r"stage\[0\]: unknown key 'kernal'"),
        ("[[stage]]\nwidth = 16\n", r"stage\[0\].depth: missing"),
        ("[[stage]]\nwidth = { low = 32, high = 16 }\ndepth = 1\n", "a range needs low <= high"),
        ("[[stage]]\nwidth = { low = 16, high = 32, stride = 8 }\ndepth = 1\n", "unknown range key 'stride'"),
        ("num_stages = 3\n[[stage]]\nwidth = 16\ndepth = 1\n", "num_stages: 3 is not allowed"),
        ("resolution = 64\n", "stage: missing"),
        ("scan = ['diagonal']\n[[stage]]\nwidth = 16\ndepth = 1\n[[stage]]\nwidth = 16\ndepth = 1\n", "scan: 'diagonal' is not allowed"),
    ],
)
def test_space_file_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        SearchSpace.load(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SearchSpace.load(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="space: 'nope' is not allowed; give a shipped space"):
        SearchSpace.load("nope")


def test_shipped_spaces_are_package_data():
    assert DEFAULT_SPACE == "default" and {"default", "tiny"} <= set(space_names())
    assert SearchSpace.load().name == "default"  # read through importlib.resources, not a path


def test_smallest_does_not_trust_the_listed_order(tmp_path):
    """The cheapest choice wins wherever the file lists it: stem stride 16 over 4, forward over cross."""
    text = ("resolution = [128, 64]\nstem_stride = [4, 16]\nscan = ['cross', 'forward']\n"
            "[[stage]]\nwidth = [48, 16]\ndepth = 1\nkernel = [7, 3]\n"
            "[[stage]]\nwidth = 32\ndepth = [2, 1]\n[[stage]]\nwidth = 32\ndepth = 1\n")
    path = tmp_path / "shuffled.toml"
    path.write_text(text)
    small = SearchSpace.load(path).smallest()
    assert (small.resolution, small.stem_stride, small.scan) == (64, 16, "forward")
    assert small.widths[0] == 16 and small.stages[0].kernel == 3 and small.depths[1] == 1
