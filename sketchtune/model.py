"""timm model factory: pretrained weights from the hub or from a local file, offline-safe."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
from torch import nn

from .config import ModelConfig
from .errors import ModelError, first_line

__all__ = ["ModelError", "build_model", "check_model_name", "create_on_meta"]

_log = logging.getLogger(__name__)



def check_model_name(name: str, source: str | None = None) -> None:
    """Raise ModelError unless timm knows `name` (an architecture, optionally `.tag`).

    `source` (the config file, and where in it) starts the message when given.
    """
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:6]}*")[:5]
        hint = (f"did you mean one of {close}?" if close
                else "`python -c 'import timm; print(timm.list_models())'` lists them")
        where = f"{source}: " if source else ""
        raise ModelError(f"{where}model.name {name!r}: timm has no such model; {hint}")


def build_model(cfg: ModelConfig, num_classes: int, img_size: int | None = None) -> nn.Module:
    """`timm.create_model` with the classifier sized for `num_classes`.

    With `pretrained` and a `weights_file`, the weights come from that local file
    (.safetensors, or a .pth/.bin loaded with `weights_only=True`), so an offline machine
    can fine-tune; timm drops the old classifier when its shape differs.
    """
    check_model_name(cfg.name)
    kwargs: dict = {"num_classes": num_classes, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.pretrained and cfg.weights_file is not None:
        path = Path(cfg.weights_file)
        if not path.is_file():
            raise ModelError(f"model.weights_file {str(path)!r}: file not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = _create(cfg.name, cfg.pretrained, img_size, kwargs)
    except Exception as err:  # hub clients raise their own error types when offline
        if not cfg.pretrained:
            raise
        src = cfg.weights_file or "the Hugging Face hub"
        first = first_line(err, 200)
        raise ModelError(
            f"pretrained weights for {cfg.name!r} could not be loaded from {src}: {first}. "
            "Offline? Download the weights once and set model.weights_file, "
            "or set model.pretrained=false"
        ) from None
    _log.info("built %s (%d classes, pretrained=%s)", cfg.name, num_classes, cfg.pretrained)
    return model


def create_on_meta(name: str, img_size: int) -> nn.Module:
    """The architecture, randomly initialised on the meta device (shapes only, no memory), in
    eval mode: a forward pass there checks an image size in a second, for any backbone."""
    import torch

    with torch.device("meta"):
        return _create(name, False, img_size, {"num_classes": 2}).eval()


def _create(name: str, pretrained: bool, img_size: int | None, kwargs: dict) -> nn.Module:
    # Transformers (ViT, CoAtNet, MaxViT, EVA) fix their position embeddings at build time
    # and take `img_size`; convolutional nets take any size and reject the argument.
    if img_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)
