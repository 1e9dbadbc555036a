"""U-Net levels and automatic layer choice.

A U-Net's levels, in data-flow order: ``enc0..encN`` (encoder stage outputs, before
the next down-sampling), ``bottleneck``, ``dec0..decM`` (decoder stage outputs) and
``final`` (the last feature map before the output layer). When the last decoder
stage IS that feature map it is called ``final``, not ``decM``.

Discovery reads the module structure of MONAI ``UNet``, ``BasicUNet``, ``DynUNet``,
``SegResNet``, segmentation-models-pytorch ``Unet`` and nnU-Net's encoder/decoder
U-Nets (also when wrapped inside another module);
any other network takes an explicit list of module paths. Per architecture
(docs/levels.md has the tables):

* MONAI ``UNet``: every encoder stage starts with a strided convolution, so there is
  no full-resolution encoder feature map: ``enc0`` is the first down block's output at
  1/s0 of the input, ``encI`` the I-th down block's output (the feature map right
  before the next strided convolution; where a classic U-Net pools). ``bottleneck``
  is the bottom block, ``decI`` the inner up blocks. The outermost up block (a
  transposed convolution, plus a residual unit when ``num_res_units > 0``) outputs the
  logits itself, so ``final`` is its input: the outermost skip concatenation
  ``[enc0, last decoder block]`` (2 x channels[0] channels, at 1/s0).
* MONAI ``BasicUNet``: ``conv_0`` (full resolution), ``down_1..down_3``, bottleneck
  ``down_4``, ``upcat_4..upcat_2``, ``final`` = ``upcat_1`` (before the 1x1 ``final_conv``).
* MONAI ``DynUNet``: ``input_block``, ``downsamples.*``, ``bottleneck``,
  ``upsamples.*`` with the last one as ``final`` (before the 1x1 ``output_block``);
  deep-supervision heads are side outputs and not levels.
* dynamic_network_architectures ``PlainConvUNet``, ``ResidualEncoderUNet``, ``ResidualUNet``
  (nnU-Net's networks) and any module with ``encoder.stages`` and one fewer
  ``decoder.stages``: ``encoder.stages.*`` (the last is the bottleneck),
  ``decoder.stages.*`` with the last one as ``final`` (before the 1x1 ``seg_layers``).
* MONAI ``SegResNet``: ``down_layers.*`` (the last is the bottleneck), ``up_layers.*``
  with the last as ``final``; ``SegResNetDS``: ``encoder.layers.*.blocks`` and
  ``up_layers.*.blocks`` the same way.
* smp ``Unet``: the encoder features its decoder consumes, each mapped to the module
  that produces it (resnet: ``relu``, ``layer1..layer3``, bottleneck ``layer4``); the
  decoder's center block is the bottleneck when there is one (vgg encoders);
  ``decoder.blocks.*`` with the last one as ``final`` (before the segmentation head).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from medcam.core.hooks import LayerCapture, evaluation_mode, select_output
from medcam.errors import UserError


class LevelError(UserError):
    """Levels cannot be discovered for this network; pass module paths explicitly."""


@dataclass(frozen=True)
class Level:
    """One U-Net level: its name (``enc0``, ``bottleneck``, ...) and module path."""

    name: str
    path: str


@dataclass(frozen=True)
class LevelShape:
    """A level measured on an input: channels and spatial grid of its output."""

    name: str
    path: str
    channels: int
    grid: tuple[int, ...]


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

    def connection(node: Any) -> bool:  # Sequential(down, SkipConnection(...), up)
        return isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection)

    node: Any = model.model
    if not connection(node):
        raise LevelError(
            f"this {type(model).__name__} does not have MONAI UNet's Sequential(down, SkipConnection, up) "
            "structure (a customised subclass?); pass layers=[module paths]"
        )
    encoders, decoders = [], []
    path = "model"
    while True:
        encoders.append(f"{path}.0")
        decoders.append(f"{path}.2")
        inner, inner_path = node[1].submodule, f"{path}.1.submodule"
        if not connection(inner):
            break
        node, path = inner, inner_path
    # decoders were collected outside-in; the outermost up block produces the logits, so the
    # last feature map before it is the outermost skip connection's concatenation
    return _named(encoders, inner_path, decoders[1:][::-1], "model.1")


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
    encoder = model.encoder
    name = getattr(model, "name", type(encoder).__name__)
    reference = next(encoder.parameters(), None)
    channels = int(getattr(encoder, "_in_channels", 3))
    # 64 px: divisible by every smp encoder's output stride (at most 32)
    probe = torch.zeros(
        1,
        channels,
        64,
        64,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
    )
    features, producers = _feature_producers(encoder, probe)
    center = getattr(model.decoder, "center", None)
    has_center = isinstance(center, nn.Module) and not isinstance(center, nn.Identity)
    paths: list[str] = []
    for index, (feature, producer) in enumerate(zip(features, producers, strict=True)):
        if feature.shape[1] == 0:
            continue  # a placeholder some encoders return for a stage they do not have
        if producer is None:
            if index == 0 and feature.shape == probe.shape:
                continue  # the input itself (most encoders list it first; the decoder drops it)
            raise LevelError(
                f"smp Unet {name}: encoder feature {index} ({feature.shape[1]} channels at "
                f"{tuple(feature.shape[2:])} for a 64 x 64 input) is computed outside any module, so it "
                f"cannot be hooked; pass layers=[module paths], e.g. the decoder blocks "
                f"{', '.join(f'decoder.blocks.{i}' for i in range(len(model.decoder.blocks)))}"
            )
        paths.append(f"encoder.{producer}")
    if has_center:
        encoders, bottleneck = paths, "decoder.center"
    else:
        encoders, bottleneck = paths[:-1], paths[-1] if paths else ""
    if not bottleneck:
        raise LevelError(f"smp Unet {name}: no encoder feature comes from a module; pass layers=[module paths]")
    blocks = [f"decoder.blocks.{i}" for i in range(len(model.decoder.blocks))]
    return _named(encoders, bottleneck, blocks[:-1], blocks[-1])


def _feature_producers(encoder: nn.Module, x: Tensor) -> tuple[list[Tensor], list[str | None]]:
    """An smp encoder's feature list and, per feature, the module whose call produced it.

    A module produces a tensor when it returns it and did not just pass it through:
    an identity (e.g. the padding of the next stage's first convolution) returns its
    input unchanged and is skipped, an in-place activation changes its input and
    counts. Of several producers (a block and the wrapper that returns its output) the
    last to finish is taken: hooking it replaces exactly what the encoder hands on.
    """
    finished: list[tuple[str, Tensor]] = []
    # per module, a stack of calls: the (tensor, version) of each tensor input at call time
    started: dict[int, list[list[tuple[Tensor, int]]]] = {}
    handles = []

    def before(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        seen = [(t, t._version) for t in inputs if isinstance(t, Tensor)]
        started.setdefault(id(module), []).append(seen)

    def after(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            calls = started.get(id(module))
            seen = calls.pop() if calls else []
            if not isinstance(output, Tensor):
                return
            if not any(t is output and t._version == version for t, version in seen):
                finished.append((path, output))

        return record

    try:
        for path, module in encoder.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after(path)))
        with torch.no_grad(), evaluation_mode(encoder):
            features = list(encoder(x))
    except (RuntimeError, ValueError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LevelError(
            f"could not run the smp encoder {type(encoder).__name__} on a {tuple(x.shape)} probe to find its "
            f"stages ({first}); pass layers=[module paths]"
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    producers: list[str | None] = []
    for feature in features:
        matches = [path for path, output in finished if output is feature]
        producers.append(matches[-1] if matches else None)
    return features, producers


def _stage_list(module: Any) -> nn.Sequential | nn.ModuleList | None:
    stages = getattr(module, "stages", None)
    return stages if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) > 0 else None


def _encoder_decoder_stages(model: nn.Module) -> list[Level] | None:
    """``encoder.stages`` + ``decoder.stages`` U-Nets: dynamic_network_architectures' PlainConvUNet,
    ResidualEncoderUNet and ResidualUNet (nnU-Net's networks) and any network built the same way.

    The encoder hands every stage's output to the decoder (the last one is the bottleneck);
    decoder stage ``s`` fuses the up-sampled previous stage with encoder stage ``-(s + 2)``,
    so there is one decoder stage fewer than encoder stages. The last decoder stage feeds
    the 1x1 segmentation layer: ``final``. Deep-supervision heads are side outputs, not levels.
    """
    encoder = _stage_list(getattr(model, "encoder", None))
    decoder = _stage_list(getattr(model, "decoder", None))
    if encoder is None or decoder is None or len(decoder) != len(encoder) - 1:
        return None
    encoders = [f"encoder.stages.{i}" for i in range(len(encoder))]
    decoders = [f"decoder.stages.{i}" for i in range(len(decoder))]
    return _named(encoders[:-1], encoders[-1], decoders[:-1], decoders[-1])


def _segresnet(model: nn.Module) -> list[Level] | None:
    """MONAI ``SegResNet`` (and ``SegResNetVAE``): ``down_layers.*`` (the last is the bottleneck),
    ``up_layers.*`` with the last one as ``final`` (before ``conv_final``)."""
    from monai.networks.nets import SegResNet

    if not isinstance(model, SegResNet) or len(model.up_layers) == 0:
        return None
    downs = [f"down_layers.{i}" for i in range(len(model.down_layers))]
    ups = [f"up_layers.{i}" for i in range(len(model.up_layers))]
    return _named(downs[:-1], downs[-1], ups[:-1], ups[-1])


def _segresnet_ds(model: nn.Module) -> list[Level] | None:
    """MONAI ``SegResNetDS``: ``encoder.layers.*.blocks`` (the last is the bottleneck) and
    ``up_layers.*.blocks`` with the last one as ``final`` (before its head)."""
    from monai.networks.nets import SegResNetDS

    if not isinstance(model, SegResNetDS):
        return None
    stages = model.encoder.layers
    if len(model.up_layers) == 0 or not isinstance(stages, nn.ModuleList) or len(stages) < 2:
        return None
    downs = [f"encoder.layers.{i}.blocks" for i in range(len(stages))]
    ups = [f"up_layers.{i}.blocks" for i in range(len(model.up_layers))]
    return _named(downs[:-1], downs[-1], ups[:-1], ups[-1])


_FINDERS: tuple[Callable[[nn.Module], list[Level] | None], ...] = (
    _monai_unet,
    _basic_unet,
    _dyn_unet,
    _smp_unet,
    _segresnet,
    _segresnet_ds,
    _encoder_decoder_stages,
)


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
        f"levels are discovered for MONAI UNet, BasicUNet, DynUNet, SegResNet(DS), smp Unet and "
        f"encoder.stages/decoder.stages U-Nets (nnU-Net's PlainConvUNet, ResidualEncoderUNet), not for "
        f"{type(model).__name__}; pass layers=[module paths] instead"
    )


def measure_levels(
    model: nn.Module, x: Tensor, levels: Sequence[Level] | Mapping[str, str] | None = None
) -> list[LevelShape]:
    """Channels and output grid of each level (default: the discovered ones) for input ``x``.

    One forward pass without autograd, in eval mode; hooks are removed afterwards.
    ``levels`` may also be ``{name: module path}`` for any network.
    """
    if levels is None:
        levels = discover_levels(model)
    named = list(levels.items()) if isinstance(levels, Mapping) else [(lv.name, lv.path) for lv in levels]
    paths = list(dict.fromkeys(path for _, path in named))
    with torch.no_grad(), evaluation_mode(model), LayerCapture(model, paths) as capture:
        model(x)
    capture.check()
    shapes = []
    for name, path in named:
        out = capture.activations[path]
        shapes.append(LevelShape(name, path, int(out.shape[1]), tuple(int(s) for s in out.shape[2:])))
    return shapes


_LEVEL_NAME = re.compile(r"^(enc|dec)(\d+)$")


def level_order(names: Sequence[str]) -> list[str]:
    """``names`` in U-Net data-flow order (enc*, bottleneck, dec*, final); other names keep their place after."""
    rank = {"bottleneck": (1, 0), "final": (3, 0)}

    def key(item: tuple[int, str]) -> tuple[int, int]:
        index, name = item
        match = _LEVEL_NAME.match(name)
        if match:
            return (0 if match.group(1) == "enc" else 2, int(match.group(2)))
        return rank.get(name, (4, index))

    return [name for _, name in sorted(enumerate(names), key=key)]


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


def segmentation_default_level(levels: list[Level]) -> Level | None:
    """The level ``layers="auto"`` explains on a U-Net: its last decoder level ``decM`` (else ``final``).

    The rule comes from measurement (docs/levels.md): on the demo U-Net and held-out
    phantoms the energy of Seg-HiRes-Grad CAM inside the true tumour is 0.72 at dec1 and
    final, 0.17 at dec0 and 0.05 at the bottleneck. The last decoder level localises as
    well as ``final`` at half its resolution, which halves the cost of region methods.
    The bottleneck stays reachable as ``layers="levels:bottleneck"``.
    """
    decoders = [level for level in levels if _LEVEL_NAME.match(level.name) and level.name.startswith("dec")]
    if decoders:
        return decoders[-1]
    return next((level for level in levels if level.name == "final"), None)


def auto_layer(model: nn.Module, x: Tensor) -> tuple[str, str]:
    """A sensible layer to explain and why: a U-Net's last decoder level, a classifier's last feature map.

    Returns ``(module path, reason)``.
    """
    try:
        levels = discover_levels(model)
    except LevelError:
        levels = []
    chosen = segmentation_default_level(levels)
    if chosen is not None:
        return chosen.path, f"last decoder level ({chosen.name}) of the {type(model).__name__}"
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
