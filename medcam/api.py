"""The public entry point: ``medcam.explain(model, x, method, target, layers)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode, refuse_scripted, resolve_layer
from medcam.core.ops import NORMALIZATIONS, Normalization
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, ClassTarget, SegmentationTarget, Target, TargetError
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, PostProcessing
from medcam.methods.registry import create_method
from medcam.models.levels import LevelError, auto_layer, discover_levels, suggest

LayerSpec = str | Sequence[str] | Mapping[str, str]


@dataclass(frozen=True)
class IndexTarget(Target):
    """A bare class index: a class target for (N, C) outputs, a segmentation target otherwise."""

    index: int | None

    def bind(self, output: Tensor) -> BoundTarget:
        if output.ndim == 2:
            return ClassTarget(self.index).bind(output)
        if self.index is None:
            raise TargetError(
                f"the model output {tuple(output.shape)} is a segmentation; say which class to explain, "
                "e.g. target=medcam.SegmentationTarget(1)"
            )
        return SegmentationTarget(self.index).bind(output)


@dataclass(frozen=True)
class Explanation:
    """A frozen explanation: one map per layer, shaped ``(N, *input spatial)``, float32.

    ``layers`` maps each key of ``maps`` to its module path; ``target`` is the bound
    target (class per sample, and the pixel set M for segmentation); ``output`` the
    model output on the input; ``extras`` further maps a method returns (e.g.
    ``"agreement"``, ``"uncertainty"``); ``layer_choice`` says how layers were chosen.
    """

    maps: Mapping[str, Tensor]
    method: str
    layers: Mapping[str, str]
    target: BoundTarget
    output: Tensor
    options: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Mapping[str, Tensor]] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    layer_choice: str = "given"

    @property
    def map(self) -> Tensor:
        """The map when exactly one layer was explained."""
        if len(self.maps) != 1:
            raise UserError(f"this explanation has {len(self.maps)} layers ({', '.join(self.maps)}); use .maps[name]")
        return next(iter(self.maps.values()))


def layer_names(text: str) -> list[str]:
    """The names of a comma-separated list in a layer spec (``"enc2, bottleneck"``), blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def resolve_layers(model: nn.Module, layers: LayerSpec, x: Tensor) -> tuple[dict[str, str], str]:
    """Turn a layer spec into ``{alias: module path}`` plus a note on how it was chosen.

    The one layer grammar (the API, ``--layer`` and ``--levels`` all end here):
    ``"auto"``: a U-Net's last decoder level or a classifier's last spatial feature map.
    ``"levels"``: every discovered U-Net level; ``"levels:enc2,bottleneck"`` a subset.
    A str (comma-separated for several) or list of str: module paths. A mapping:
    alias -> module path.
    """
    if isinstance(layers, str) and layers == "auto":
        path, reason = auto_layer(model, x)
        return {path: path}, f"auto: {reason} ({path})"
    if isinstance(layers, str) and (layers == "levels" or layers.startswith("levels:")):
        levels = {lv.name: lv.path for lv in discover_levels(model)}
        if layers == "levels":
            return levels, "levels: all"
        chosen = layer_names(layers.split(":", 1)[1])
        if not chosen:
            raise LevelError(f"{layers!r} has no level names; use 'levels' or e.g. 'levels:enc2,bottleneck'")
        for name in chosen:
            if name not in levels:
                raise LevelError(f"level {name!r} does not exist ({suggest(list(levels), name)})")
        return {n: levels[n] for n in chosen}, f"levels: {', '.join(chosen)}"
    if isinstance(layers, str) and "," in layers:
        layers = layer_names(layers)
    if isinstance(layers, str):
        mapping = {layers: layers}
    elif isinstance(layers, Mapping):
        mapping = dict(layers)
    else:
        mapping = {name: name for name in layers}
    if not mapping:
        raise UserError("no layers given; pass layers='auto', 'levels' or module paths")
    for path in mapping.values():
        resolve_layer(model, path)
    return mapping, "given"


def _as_target(target: Target | BoundTarget | int | None) -> Target | BoundTarget:
    if target is None or isinstance(target, int):
        return IndexTarget(target)
    if isinstance(target, (Target, BoundTarget)):
        return target
    raise TypeError(f"target must be a ClassTarget, SegmentationTarget, int or None, got {type(target).__name__}")


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor shaped (N, C, *spatial), got {type(x).__name__}")
    if x.ndim < 3:
        raise UserError(f"x must be shaped (N, C, *spatial) with a batch axis, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}; convert with x.float()")
    if not x.isfinite().all():
        raise UserError("x contains NaN or Inf values; clean the input before explaining it")


def explain(
    model: nn.Module,
    x: Tensor,
    method: str | CAMMethod = "gradcam",
    target: Target | BoundTarget | int | None = None,
    layers: LayerSpec = "auto",
    *,
    relu: bool = True,
    normalize: Normalization = "minmax",
    output: OutputSelector = None,
    **options: Any,
) -> Explanation:
    """Explain ``target`` of ``model`` on input ``x`` with ``method`` at ``layers``.

    ``x`` is ``(N, C, *spatial)`` in 1, 2 or 3 spatial dimensions. ``target`` is a
    :class:`ClassTarget`, a :class:`SegmentationTarget`, a class index (either kind,
    by output shape) or ``None`` (each sample's predicted class, classifiers only).
    ``options`` go to the method's constructor (e.g. ``batch_size`` for Score-CAM).
    The model runs in eval mode; every module's training flag, its parameters'
    ``.grad`` and its hooks are as before when this returns or raises.
    """
    refuse_scripted(model)
    _check_input(x)
    if normalize not in NORMALIZATIONS:
        raise UserError(f"normalize={normalize!r} is not known; use one of {NORMALIZATIONS}")
    cam = create_method(method, **options)
    post = PostProcessing(relu=relu, normalization=normalize)
    with evaluation_mode(model):
        mapping, choice = resolve_layers(model, layers, x)
        probe = Probe(model, output)
        result = cam.run(probe, x, _as_target(target), mapping, post)
    device = x.device
    return Explanation(
        maps=MappingProxyType({k: v.to(device) for k, v in result.maps.items()}),
        method=cam.name,
        layers=MappingProxyType(mapping),
        target=result.target,
        output=result.output.to(device),
        options=MappingProxyType(cam.options()),
        extras=MappingProxyType(
            {k: MappingProxyType({a: t.to(device) for a, t in v.items()}) for k, v in result.extras.items()}
        ),
        stats=MappingProxyType(dict(result.stats)),
        layer_choice=choice,
    )
