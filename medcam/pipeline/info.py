"""``medcam info``: what a checkpoint offers (classes, regions, preprocessing, default layers, U-Net levels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medcam.api import resolve_layers
from medcam.core.hooks import LayerCapture, evaluation_mode
from medcam.errors import UserError
from medcam.models.levels import LevelError, discover_levels
from medcam.models.loading import ModelSource, load_model
from medcam.models.nnunet import NNUNetBundle


@dataclass(frozen=True)
class LayerInfo:
    """A hookable layer: its name (level name or module path), path, channels and output grid."""

    name: str
    path: str
    channels: int
    grid: tuple[int, ...]
    scale: tuple[float, ...]  # output grid / input grid per axis
    voxel_mm: tuple[float, ...] | None  # voxel size at this layer, if the checkpoint fixes the spacing


def inspect_model(model: ModelSource, *, all_layers: bool = False) -> dict[str, Any]:
    """What a checkpoint offers: classes, regions, preprocessing, default layers and U-Net levels.

    Levels (or, with ``all_layers``, every module with a tensor output) are measured with
    one forward pass at the size the network sees: the checkpoint's patch size, else (a
    whole-image model) its preprocessing ``size``, else 224 per axis for a classifier and
    32 per axis otherwise.
    """
    loaded = load_model(model)
    net, meta = loaded.bundle.model, loaded.bundle.meta
    if meta.patch_size:
        size = tuple(meta.patch_size)
    elif meta.preprocessing.size:
        size = tuple(meta.preprocessing.size)
    else:
        size = (224 if meta.task == "classification" else 32,) * meta.spatial_dims
    x = torch.zeros(1, meta.in_channels, *size)
    try:
        levels = [(lv.name, lv.path) for lv in discover_levels(net)]
    except LevelError:
        levels = []
    if all_layers:
        shapes = _output_shapes(net, x)
        named = [(path, path) for path in shapes]
    else:
        named = levels
        with torch.no_grad(), evaluation_mode(net), LayerCapture(net, [p for _, p in named]) as capture:
            net(x)
        shapes = {p: tuple(t.shape) for p, t in capture.activations.items()}
    spacing = meta.preprocessing.spacing
    if isinstance(loaded.bundle, NNUNetBundle) and loaded.bundle.source is not None:
        spacing = tuple(float(v) for v in loaded.bundle.source.configuration_manager().spacing)  # model grid axes
    infos = []
    for name, path in named:
        shape = shapes.get(path)
        if shape is None or len(shape) != 2 + meta.spatial_dims:
            continue
        grid = tuple(int(v) for v in shape[2:])
        scale = tuple(g / s for g, s in zip(grid, size, strict=True))
        voxel = tuple(round(sp / sc, 4) for sp, sc in zip(spacing, scale, strict=True)) if spacing else None
        infos.append(LayerInfo(name, path, int(shape[1]), grid, scale, voxel))
    try:
        auto, reason = resolve_layers(net, "auto", x)
        auto_text = f"{', '.join(auto.values())} ({reason})"
    except UserError as err:
        auto_text = f"none ({err})"
    return {
        "path": str(loaded.path) if loaded.path else None,
        "meta": meta,
        "input_size": size,
        "auto_layer": auto_text,
        "levels_found": bool(levels),
        "layers": infos,
    }


def _output_shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every named module that returns a tensor, in the order they finish."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(path: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                shapes.setdefault(path, tuple(output.shape))

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad(), evaluation_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes
