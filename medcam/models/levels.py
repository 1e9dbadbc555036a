"""U-Net levels and automatic layer choice.

A U-Net's levels, in data-flow order: ``enc0..encN`` (encoder stage outputs, before
the next down-sampling), ``bottleneck``, ``dec0..decM`` (decoder stage outputs) and
``final`` (the last feature map before the output convolution). When the last
decoder stage IS that feature map it is called ``final``, not ``decM``.

Discovery reads the module structure of MONAI ``UNet``, ``BasicUNet``, ``DynUNet``
and segmentation-models-pytorch ``Unet`` (also when wrapped inside another module);
any other network takes an explicit list of module paths.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medcam.core.hooks import evaluation_mode, select_output
from medcam.errors import UserError


class LevelError(UserError):
    """Levels cannot be discovered for this network; pass module paths explicitly."""


@dataclass(frozen=True)
class Level:
    """One U-Net level: its name (``enc0``, ``bottleneck``, ...) and module path."""

    name: str
    path: str


def _named(encoders: list[str], bottleneck: str, decoders: list[str], final: str) -> list[Level]:
    levels = [Level(f"enc{i}", p) for i, p in enumerate(encoders)]
    levels.append(Level("bottleneck", bottleneck))
    levels += [Level(f"dec{i}", p) for i, p in enumerate(decoders)]
    levels.append(Level("final", final))
    return levels


def _monai_unet(model: nn.Module) -> list[Level] | None:
    from monai.networks.layers.simplelayers import SkipConnection
    from monai.networks.nets import UNet

    if not isinstance(model, UNet):
        return None
    # model.model = Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)
    encoders, decoders = [], []
    node: nn.Module = model.model
    path = "model"
    while True:
        encoders.append(f"{path}.0")
        decoders.append(f"{path}.2")
        inner = node[1].submodule  # type: ignore[index]
        inner_path = f"{path}.1.submodule"
        if isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
            node, path = inner, inner_path
            continue
        bottleneck = inner_path
        break
    # the outermost up path produces the logits; the last feature map before it is the
    # outermost skip connection's concatenation
    inner_decoders = decoders[1:][::-1]
    return _named(encoders, bottleneck, inner_decoders, "model.1")


def _basic_unet(model: nn.Module) -> list[Level] | None:
    from monai.networks.nets import BasicUNet

    if not isinstance(model, BasicUNet):
        return None
    return _named(["conv_0", "down_1", "down_2", "down_3"], "down_4", ["upcat_4", "upcat_3", "upcat_2"], "upcat_1")


def _dyn_unet(model: nn.Module) -> list[Level] | None:
    from monai.networks.nets import DynUNet

    if not isinstance(model, DynUNet):
        return None
    encoders = ["input_block"] + [f"downsamples.{i}" for i in range(len(model.downsamples))]
    ups = [f"upsamples.{i}" for i in range(len(model.upsamples))]
    return _named(encoders, "bottleneck", ups[:-1], ups[-1])


def _smp_unet(model: nn.Module) -> list[Level] | None:
    try:
        from segmentation_models_pytorch import Unet
    except ImportError:  # pragma: no cover - smp is a dependency
        return None
    if not isinstance(model, Unet):
        return None
    # encoder stages: for each resolution the encoder produces, the last direct child of
    # the encoder that outputs it (resnet: relu, layer1, layer2, layer3, layer4)
    channels = getattr(model.encoder, "_in_channels", 3)
    probe = torch.zeros(1, channels, 64, 64)
    order = _output_order(model.encoder, probe, prefix="encoder")
    stages: dict[tuple[int, ...], str] = {}
    for path, shape in order:
        if path.count(".") == 1 and len(shape) == 4:
            stages[tuple(shape[2:])] = path
    paths = list(stages.values())
    if len(paths) < 2:
        raise LevelError(f"cannot find the stages of the {type(model.encoder).__name__} encoder; pass layer paths")
    blocks = [f"decoder.blocks.{i}" for i in range(len(model.decoder.blocks))]
    return _named(paths[:-1], paths[-1], blocks[:-1], blocks[-1])


_FINDERS: tuple[Callable[[nn.Module], list[Level] | None], ...] = (_monai_unet, _basic_unet, _dyn_unet, _smp_unet)


def discover_levels(model: nn.Module) -> list[Level]:
    """Levels of a supported U-Net (searched also inside wrappers), in data-flow order."""
    for prefix, module in model.named_modules():
        for finder in _FINDERS:
            levels = finder(module)
            if levels is not None:
                if prefix:
                    levels = [Level(lv.name, f"{prefix}.{lv.path}") for lv in levels]
                return levels
    raise LevelError(
        f"levels are discovered for MONAI UNet, BasicUNet, DynUNet and smp Unet, not for "
        f"{type(model).__name__}; pass layers=[module paths] instead"
    )


def _output_order(model: nn.Module, x: Tensor, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """(module path, output shape) for every module, in the order the modules finish."""
    order: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def hook(path: str) -> Callable[[nn.Module, object, object], None]:
        def record(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                order.append((path, tuple(output.shape)))

        return record

    try:
        for name, module in model.named_modules():
            if name:
                full = f"{prefix}.{name}" if prefix else name
                handles.append(module.register_forward_hook(hook(full)))
        with torch.no_grad(), evaluation_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


def auto_layer(model: nn.Module, x: Tensor) -> tuple[str, str]:
    """A sensible layer to explain and why: a U-Net's bottleneck, a classifier's last feature map.

    Returns ``(module path, reason)``.
    """
    try:
        levels = discover_levels(model)
    except LevelError:
        levels = []
    for level in levels:
        if level.name == "bottleneck":
            return level.path, f"bottleneck of the {type(model).__name__}"
    order = _output_order(model, x[:1])
    with torch.no_grad(), evaluation_mode(model):
        out = select_output(model(x[:1]))
    spatial = [(p, s) for p, s in order if len(s) >= 3 and torch.Size(s[2:]).numel() > 1]
    if not spatial:
        raise LevelError(
            "layers='auto' found no module that outputs a spatial feature map (N, C, *spatial); "
            "pass layers=[module path]"
        )
    if out.ndim == 2:
        path = spatial[-1][0]
        return path, "last spatial feature map before the classifier head"
    smallest = min(torch.Size(s[2:]).numel() for _, s in spatial)
    candidates = list(dict.fromkeys(p for p, s in spatial if torch.Size(s[2:]).numel() == smallest))
    raise LevelError(
        f"layers='auto' does not know the bottleneck of {type(model).__name__}; pass layers=[path], "
        f"e.g. one of the lowest-resolution modules: {', '.join(candidates[-5:])}"
    )


def suggest(names: list[str], name: str) -> str:
    """'closest: a, b' for an unknown level name."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    return f"closest: {', '.join(close)}" if close else f"valid: {', '.join(names)}"
