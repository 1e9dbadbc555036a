"""Architectures medcam trains and explains, built by name from plain arguments.

The name and arguments are stored in every checkpoint, so a checkpoint rebuilds
its network without pickled code. Classifiers get a fresh head with
``num_classes`` outputs; ``pretrained=True`` asks torchvision's weights API for
ImageNet weights (needs a network; tests use ``pretrained=False``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from medcam.errors import UserError


def _monai(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        import monai.networks.nets as nets

        return getattr(nets, name)(**kwargs)

    return build


def _smp_unet(**kwargs: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    if "encoder_weights" not in kwargs:
        # smp downloads ImageNet weights by default (and hangs offline): be explicit
        raise UserError("smp.Unet needs encoder_weights stated explicitly (None, or 'imagenet' with a network)")
    return smp.Unet(**kwargs)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        import torchvision.models as tvm

        weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
        try:
            model = tvm.get_model(name, weights=weights, **kwargs)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            reason = getattr(err, "reason", None) or err  # URLError: the network's own words
            raise UserError(
                f"pretrained: true needs torchvision's ImageNet weights of {name}, which could not be downloaded "
                f"({reason}); offline, set pretrained: false in the config (or --set model.arguments.pretrained=false) "
                "to train from scratch, or run once with a network to fill torch's cache (~/.cache/torch)"
            ) from err
        replace_head(model, num_classes)
        return model

    return build


HEAD_NAMES = ("fc", "classifier", "heads")


def head_name(model: nn.Module) -> str:
    """Name of a torchvision classifier's head module (``fc``, ``classifier`` or ``heads``)."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise UserError(f"cannot find the classification head of {type(model).__name__} (looked for {HEAD_NAMES})")


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap a torchvision classifier's last linear layer for one with ``num_classes`` outputs."""
    for owner_name in HEAD_NAMES:
        owner = getattr(model, owner_name, None)
        if isinstance(owner, nn.Linear):
            setattr(model, owner_name, nn.Linear(owner.in_features, num_classes))
            return
        if isinstance(owner, nn.Sequential):
            for index in range(len(owner) - 1, -1, -1):
                layer = owner[index]
                if isinstance(layer, nn.Linear):
                    owner[index] = nn.Linear(layer.in_features, num_classes)
                    return
    raise UserError(f"cannot find the classification head of {type(model).__name__}")


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "monai.UNet": _monai("UNet"),
    "monai.BasicUNet": _monai("BasicUNet"),
    "monai.DynUNet": _monai("DynUNet"),
    "smp.Unet": _smp_unet,
    "torchvision.resnet18": _torchvision("resnet18"),
    "torchvision.resnet50": _torchvision("resnet50"),
    "torchvision.resnet101": _torchvision("resnet101"),
    "torchvision.densenet161": _torchvision("densenet161"),
    "torchvision.efficientnet_b0": _torchvision("efficientnet_b0"),
    "torchvision.vit_b_16": _torchvision("vit_b_16"),
}


def build_model(architecture: str, **arguments: Any) -> nn.Module:
    """Build a registered architecture from its arguments (as stored in a checkpoint)."""
    if architecture not in ARCHITECTURES:
        close = difflib.get_close_matches(architecture, list(ARCHITECTURES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"architecture {architecture!r} is not known (valid: {', '.join(ARCHITECTURES)}){hint}")
    try:
        return ARCHITECTURES[architecture](**arguments)
    except TypeError as err:
        raise UserError(f"cannot build {architecture} from arguments {sorted(arguments)}: {err}") from err


# layers RobustCAM hooks on each classifier (the last one first): the default CAM layer
_CLASSIFIER_LAYERS: dict[str, list[str]] = {
    "torchvision.resnet18": ["layer4"],
    "torchvision.resnet50": ["layer4"],
    "torchvision.resnet101": ["layer4"],
    "torchvision.densenet161": ["features.denseblock4"],
    "torchvision.efficientnet_b0": ["features.8"],
    "torchvision.vit_b_16": ["encoder.layers.encoder_layer_11"],
}


def default_cam_layers(architecture: str, model: nn.Module) -> list[str]:
    """Default layers to explain: a U-Net's last decoder level (see levels.auto_layer), a classifier's last block."""
    if architecture in _CLASSIFIER_LAYERS:
        return list(_CLASSIFIER_LAYERS[architecture])
    from medcam.models.levels import LevelError, discover_levels, segmentation_default_level

    try:
        levels = discover_levels(model)
    except LevelError:
        return []
    chosen = segmentation_default_level(levels)
    return [] if chosen is None else [chosen.path]
