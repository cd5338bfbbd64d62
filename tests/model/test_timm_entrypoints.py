import pytest
import timm
import torch

import mmlab.model  # noqa: F401  (registers the entrypoints)
from mmlab.spec.presets import PAPER_PRESETS, PRESETS


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_timm_names_and_input_size(name):
    assert f"mobilemamba_{name}" in timm.list_models("mobilemamba_*")
    with torch.device("meta"):
        model = timm.create_model(f"mobilemamba_{name}")
    res = PRESETS[name].resolution
    assert model.pretrained_cfg["input_size"] == (3, res, res)
    assert model.num_classes == 1000


def test_timm_model_methods():
    model = timm.create_model("mobilemamba_t2", num_classes=7, drop_path_rate=0.1).eval()
    assert model.spec.drop_path == pytest.approx(0.1)
    x = torch.randn(1, 3, 192, 192)
    with torch.inference_mode():
        feats = model.forward_features(x)
        assert feats.shape == (1, 368, 3, 3)
        assert model.forward_head(feats).shape == (1, 7)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 368)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.get_classifier().fc.out_features == 3
    model.reset_classifier(0)
    with torch.inference_mode():
        assert model(x).shape == (1, 368)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 192, 192) and data_cfg["interpolation"] == "bicubic"
