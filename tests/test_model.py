"""The timm model factory: offline weight files, clear errors, img_size for transformers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sketchtune.config import ModelConfig
from sketchtune.errors import ModelError
from sketchtune.model import build_model, check_model_name


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_build_model_outputs_num_classes_at_img_size(name):
    m = build_model(ModelConfig(name=name), num_classes=7, img_size=64).eval()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_check_model_name_rejects_unknown_backbone():
    with pytest.raises(ModelError, match="no such model"):
        check_model_name("resnet_9000")
    check_model_name("caformer_b36.sail_in22k")  # known to timm, nothing downloaded


def test_build_model_loads_local_weights_file_and_resets_classifier(tmp_path):
    src = build_model(ModelConfig(name="test_resnet"), num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    cfg = ModelConfig(name="test_resnet", pretrained=True, weights_file=path)
    m = build_model(cfg, num_classes=5)
    body = [k for k in src.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(m.state_dict()[k], src.state_dict()[k]) for k in body)
    assert m.state_dict()["fc.weight"].shape == (5, src.num_features)


def test_build_model_refuses_a_pickle_weights_file(tmp_path):
    import pickle

    path = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (exec, ("open(r'%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    path.write_bytes(pickle.dumps({"fc.weight": Boom()}))
    cfg = ModelConfig(name="test_resnet", pretrained=True, weights_file=path)
    with pytest.raises(ModelError, match="could not be loaded"):
        build_model(cfg, num_classes=5)
    assert not (tmp_path / "pwned").exists()


def test_build_model_missing_weights_file(tmp_path):
    cfg = ModelConfig(name="test_resnet", pretrained=True, weights_file=tmp_path / "nope.pth")
    with pytest.raises(ModelError, match="file not found"):
        build_model(cfg, num_classes=5)


def test_build_model_pretrained_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    # The variable is read when huggingface_hub is imported; set the constant it became.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = ModelConfig(name="test_resnet.r160_in1k", pretrained=True)
    with pytest.raises(ModelError, match="weights_file"):
        build_model(cfg, num_classes=5)
