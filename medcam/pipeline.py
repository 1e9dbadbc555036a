"""The explain pipeline: an image file in, maps on its own voxel grid and a review folder out.

    checkpoint --load_checkpoint--> model + metadata (labels, regions, preprocessing, patch)
    image --load_volume--> Volume --prepare--> model grid --predict (sliding window)--> Y
    Y + --pixels--> M --sliding_window_cam (method, layers)--> maps on the model grid
    maps --invert the preprocessing--> maps on the ORIGINAL grid --save--> output folder

The functions take the CLI's names: ``explain_case(volume=..., class_name=..., model=...,
method=..., pixels=..., layer=..., out=..., overwrite=..., device=...)`` is
``medcam explain --volume ... --class ... --model ... --method ... --pixels ... --layer ...
--out ... [--overwrite] --device ...``; ``explain_batch`` is ``--datalist``/``--folder``.
``medcam demo`` writes a phantom case and calls :func:`explain_case` on it.

Pixel-set coordinates (``voxel:``, ``box:``, ``mask:``) are INPUT voxel indices in file
order (i, j, k as nibabel, ITK and Slicer's IJK count them; x, y = column, row for
PNG/JPEG) and are carried to the model grid here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcam.core.ops import class_argmax
from medcam.core.targets import (
    Box,
    ClassTarget,
    Mask,
    PixelSet,
    SegmentationTarget,
    Target,
    TargetError,
    Voxel,
    parse_pixel_set,
)
from medcam.errors import UserError
from medcam.inference import SlidingWindow, predict, sliding_window_cam
from medcam.level_choice import level_summary
from medcam.methods.base import CAMMethod, PostProcessing
from medcam.methods.registry import create_method, method_parameters
from medcam.models.checkpoint import DEMO_CHECKPOINT, CheckpointMeta, ModelBundle, load_checkpoint
from medcam.volumes.dicom_seg import find_dicom_seg, read_dicom_seg
from medcam.volumes.dicom_series import SeriesReferenceError, read_source_series
from medcam.volumes.folders import OutputError, check_output
from medcam.volumes.geometry import axis_codes
from medcam.volumes.io import Volume, VolumeError, is_image_file, load_volume, strip_suffix, volume_format
from medcam.volumes.montage import Montage
from medcam.volumes.preprocessing import ModelInput, prepare
from medcam.volumes.review import VolumeExplanation

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_METHOD = "hirescam"
# ------------------------------------------------------------------------------------
# The model


def default_model_path() -> Path:
    """The shipped demo checkpoint (:data:`~medcam.models.checkpoint.DEMO_CHECKPOINT`), used when no model is given."""
    if not DEMO_CHECKPOINT.is_file():
        raise UserError(
            f"no --model given and the demo model {DEMO_CHECKPOINT} is missing; pass --model PATH to a medcam "
            "checkpoint or reinstall medcam (the demo model is package data)"
        )
    return DEMO_CHECKPOINT


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A ready model with the checkpoint file it came from (recorded in ``summary.json``)."""

    bundle: ModelBundle
    path: Path | None = None
    sha256: str | None = None


def load_model(model: str | Path | ModelBundle | LoadedModel | None, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (default: the demo model) onto ``device``; bundles pass through."""
    if isinstance(model, LoadedModel):
        return LoadedModel(
            ModelBundle(model.bundle.model.to(device).eval(), model.bundle.meta), model.path, model.sha256
        )
    if isinstance(model, ModelBundle):
        return LoadedModel(ModelBundle(model.model.to(device).eval(), model.meta))
    path = Path(model) if model is not None else default_model_path()
    bundle = load_checkpoint(path, device=device)
    return LoadedModel(bundle, path, _sha256(path))


def _check_device(device: str) -> str:
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
        return device
    raise UserError(f"--device must be cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True)
class LayerInfo:
    """A hookable layer: its name (level name or module path), path, channels and output grid."""

    name: str
    path: str
    channels: int
    grid: tuple[int, ...]
    scale: tuple[float, ...]  # output grid / input grid per axis
    voxel_mm: tuple[float, ...] | None  # voxel size at this layer, if the checkpoint fixes the spacing


def inspect_model(model: str | Path | ModelBundle | LoadedModel | None, *, all_layers: bool = False) -> dict[str, Any]:
    """What a checkpoint offers: classes, regions, preprocessing, default layers and U-Net levels.

    Levels (or, with ``all_layers``, every module with a tensor output) are measured with
    one forward pass at the checkpoint's patch size (32 per axis if it has none).
    """
    from medcam.api import resolve_layers
    from medcam.core.hooks import LayerCapture, evaluation_mode
    from medcam.models.levels import LevelError, discover_levels

    loaded = load_model(model)
    net, meta = loaded.bundle.model, loaded.bundle.meta
    size = tuple(meta.patch_size) if meta.patch_size else (32,) * meta.spatial_dims
    if meta.task == "classification" and not meta.patch_size:
        size = tuple(meta.preprocessing.size or (224,) * meta.spatial_dims)
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
    from medcam.core.hooks import evaluation_mode

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


# ------------------------------------------------------------------------------------
# Class and pixel set


@dataclass(frozen=True)
class ClassChoice:
    """The explained class: a checkpoint label (one output channel) or a region (several)."""

    name: str
    kind: str  # "label" | "region"
    channels: tuple[int, ...]

    def target(self, meta: CheckpointMeta, pixels: PixelSet) -> Target:
        if meta.task == "classification":
            return ClassTarget(self.channels[0], activation=_activation(meta))
        index: int | tuple[int, ...] = self.channels[0] if len(self.channels) == 1 else self.channels
        return SegmentationTarget(index, pixels=pixels, activation=_activation(meta))


def _activation(meta: CheckpointMeta) -> Any:
    return "sigmoid" if meta.activation == "sigmoid" else "softmax"


def resolve_class(meta: CheckpointMeta, name: str) -> ClassChoice:
    """A label or region name of the checkpoint (case-insensitive); unknown names list the valid ones."""
    labels = {k.lower(): (k, v) for k, v in meta.labels.items()}
    regions = {k.lower(): (k, v) for k, v in meta.regions.items()}
    key = name.strip().lower()
    if key in labels:
        label, channel = labels[key]
        return ClassChoice(label, "label", (int(channel),))
    if key in regions:
        region, values = regions[key]
        if meta.activation == "sigmoid" or meta.task != "segmentation":
            raise TargetError(
                f"region {region!r} merges labels {list(values)}, which is defined for softmax segmentation heads; "
                f"this model has {meta.activation} outputs {sorted(meta.labels)}, explain one of them"
            )
        channels = tuple(sorted({int(v) for v in values}))
        n_out = max(meta.labels.values()) + 1 if meta.labels else 0
        if any(not 0 <= c < n_out for c in channels):
            raise TargetError(f"region {region!r} uses labels {list(channels)} but the model has {n_out} outputs")
        return ClassChoice(region, "region", channels)
    by_channel = sorted(meta.labels, key=lambda k: (meta.labels[k], k))
    valid = f"labels: {', '.join(by_channel) or 'none'}"
    if meta.regions:
        valid += f"; regions: {', '.join(meta.regions)}"
    raise TargetError(f"class {name!r} is not in this checkpoint ({valid}); pass one of them to --class")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise UserError(f"expected comma-separated integers, got {text!r}") from err


def _check_inside(volume: Volume, coords: Sequence[int], what: str, upper: bool = False) -> None:
    shape = volume.spatial_shape
    if len(coords) != len(shape):
        raise UserError(f"{what} has {len(coords)} coordinates but {volume.path.name} has {len(shape)} axes {shape}")
    limit = [s + (1 if upper else 0) for s in shape]
    if any(not 0 <= c < lim for c, lim in zip(coords, limit, strict=True)):
        raise UserError(
            f"{what} lies outside the volume of shape {shape} (input voxel indices, i.e. 0..{[s - 1 for s in shape]})"
        )


def build_pixel_set(spec: str, volume: Volume, grid: ModelInput) -> tuple[PixelSet, str]:
    """The pixel set of ``--pixels`` on the model grid, and its replayable definition.

    ``voxel:``/``box:``/``mask:`` coordinates are input voxel indices; everything else
    (predicted, prob>T, component[:K], image) is defined on the model's own output.
    """
    text = spec.strip()
    lower = text.lower()
    if lower.startswith("voxel:"):
        coords = _ints(text[6:])
        _check_inside(volume, coords, f"voxel {coords}")
        return Voxel(grid.voxel_to_model(coords)), f"voxel:{','.join(map(str, coords))}"
    if lower.startswith("box:"):
        parts = text[4:].split(":")
        if len(parts) != 2:
            raise UserError(f"box must be box:i0,j0,k0:i1,j1,k1 (start inclusive, stop exclusive), got {spec!r}")
        start, stop = _ints(parts[0]), _ints(parts[1])
        _check_inside(volume, start, f"box start {start}")
        _check_inside(volume, stop, f"box stop {stop}", upper=True)
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            raise UserError(f"box start {start} must be below stop {stop} on every axis")
        lo, hi = grid.box_to_model(start, stop)
        return Box(lo, hi), f"box:{','.join(map(str, start))}:{','.join(map(str, stop))}"
    if lower.startswith("mask:"):
        mask, definition = load_reference(text[5:], volume)
        return Mask(grid.mask_to_model(mask), label=f"mask:{definition}"), f"mask:{definition}"
    pixel_set = parse_pixel_set(text)
    return pixel_set, pixel_set.describe()


def load_reference(spec: str | Path, volume: Volume) -> tuple[np.ndarray, str]:
    """A mask file ``FILE[:LABEL]`` on ``volume``'s voxel grid (shape and affine checked) and its definition.

    Without a label every non-zero voxel is in the mask; with one, the voxels of that value.
    A DICOM SEG (a ``.dcm`` file or a folder holding one) is read by
    :func:`medcam.volumes.dicom_seg.read_dicom_seg`; its ``LABEL`` is a segment number or name.
    """
    body, label = str(spec), None
    head, sep, tail = body.rpartition(":")
    seg = find_dicom_seg(Path(head)) if sep and head else None
    if sep and head and (re.fullmatch(r"-?\d+", tail) or seg is not None):
        body, label = head, int(tail) if re.fullmatch(r"-?\d+", tail) else tail  # a SEG's segment by name too
    else:
        seg = find_dicom_seg(Path(body))
    if seg is not None:  # a DICOM SEG file, or a folder holding one
        mask = read_dicom_seg(seg, volume, label)
    else:
        mask = _mask_file(Path(body), volume, label if isinstance(label, int) else None)
    return mask, body + (f":{label}" if label is not None else "")


def _mask_file(path: Path, volume: Volume, label: int | None) -> np.ndarray:
    mask_volume = load_volume(path)
    if mask_volume.spatial_shape != volume.spatial_shape or not np.allclose(
        mask_volume.affine, volume.affine, atol=1e-3
    ):
        raise UserError(
            f"mask {path} has shape {mask_volume.spatial_shape} and orientation {axis_codes(mask_volume.affine)}, "
            f"but {volume.path.name} has shape {volume.spatial_shape} and orientation {axis_codes(volume.affine)} "
            "with another affine; give a mask on the input's voxel grid"
        )
    values = mask_volume.array[0]
    mask = np.abs(values - label) < 0.5 if label is not None else values > 0.5
    if not mask.any():
        what = f"label {label}" if label is not None else "non-zero voxels"
        found = sorted(int(v) for v in np.unique(np.rint(values)))[:10]
        raise UserError(f"mask {path} has no {what} (values present: {found}); pick another label")
    return mask


def _layers(
    model: torch.nn.Module, meta: CheckpointMeta, layer: str | Sequence[str], probe: torch.Tensor
) -> tuple[dict[str, str], str]:
    from medcam.api import resolve_layers
    from medcam.models.levels import LevelError, discover_levels

    if isinstance(layer, str) and layer == "auto" and meta.cam_layers:
        try:
            levels = {lv.name: lv.path for lv in discover_levels(model)}
        except LevelError:
            levels = {}
        chosen = {name: levels.get(name, name) for name in meta.cam_layers}
        mapping, _ = resolve_layers(model, chosen, probe)
        return mapping, f"checkpoint default: {', '.join(meta.cam_layers)}"
    if isinstance(layer, str) and "," in layer and not layer.startswith("levels"):
        layer = [part.strip() for part in layer.split(",") if part.strip()]
    return resolve_layers(model, layer, probe)


# ------------------------------------------------------------------------------------
# The explanation


def _versions() -> dict[str, str]:
    import monai
    import nibabel
    import SimpleITK as sitk  # noqa: N813 - the name everyone uses

    from medcam import __version__

    return {
        "medcam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
        "SimpleITK": sitk.Version_VersionString(),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _labels_from(output: torch.Tensor, activation: str) -> torch.Tensor:
    """Label values on the model grid: argmax (softmax) or 1 + the last channel above 0.5 (sigmoid).

    uint8 (int16 beyond 255 labels): the labelmap is a full-volume array.
    """
    dtype = torch.uint8 if output.shape[1] < 256 else torch.int16
    if activation == "sigmoid":
        labels = torch.zeros((output.shape[0], *output.shape[2:]), dtype=dtype, device=output.device)
        for channel in range(output.shape[1]):
            labels[output[:, channel] > 0] = channel + 1  # sigmoid(logit) > 0.5
        return labels
    return class_argmax(output).to(dtype)


def _segments(meta: CheckpointMeta) -> dict[int, str]:
    if meta.activation == "sigmoid":
        return {int(c) + 1: name for name, c in sorted(meta.labels.items(), key=lambda kv: kv[1])}
    return {int(c): name for name, c in sorted(meta.labels.items(), key=lambda kv: kv[1]) if int(c) != 0}


def _bind(target: Target, output: torch.Tensor, choice: ClassChoice, definition: str, path: Path) -> Any:
    try:
        return target.bind(output)
    except TargetError as err:
        if "is empty" not in str(err):
            raise
        raise TargetError(
            f"the pixel set M ({definition}) is empty: the model predicts no {choice.name} voxels in {path.name}; "
            "choose M with --pixels, e.g. --pixels prob>0.1, --pixels box:i0,j0,k0:i1,j1,k1 or --pixels image"
        ) from None


def explain_volume(
    volume: str | Path | Volume,
    *,
    class_name: str,
    model: str | Path | ModelBundle | LoadedModel | None = None,
    method: str = DEFAULT_METHOD,
    pixels: str = "predicted",
    layer: str | Sequence[str] = "auto",
    device: str = "cpu",
    overlap: float = 0.25,
    blend: str = "gaussian",
    window_batch: int = 1,
    relu: bool = True,
    normalize: Any = "minmax",
    seed: int = 0,
    progress: bool = False,
    method_options: Mapping[str, Any] | None = None,
    reference: str | Path | None = None,
    montage: Montage | None = None,
    dicom_out: bool | None = None,
) -> VolumeExplanation:
    """Explain ``class_name`` on one image with the checkpoint ``model`` (default: the demo model).

    Returns maps on the image's own voxel grid; ``.save(out)`` writes the review folder.
    With several layers (``layer="levels"``) or a ``reference`` mask (``FILE[:LABEL]`` on
    the image's grid), ``summary["levels"]`` holds each layer's localisation numbers
    (:mod:`medcam.level_choice`); ``montage`` styles the level montage PNG. ``dicom_out``:
    also write DICOM Parametric Maps and a SEG (``None``: when the input is a DICOM series;
    a series with missing or unequally spaced slices is refused here, before any work).
    Torch's random state is seeded with ``seed`` for the call and restored afterwards.
    """
    device = _check_device(device)
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = round(now - clock, 3)
            clock = now

        create_method(method, **dict(method_options or {}))  # a wrong method or option fails before any loading
        post = PostProcessing(relu=relu, normalization=normalize)
        vol = volume if isinstance(volume, Volume) else load_volume(volume)
        dicom_out = _check_dicom_source(vol, dicom_out)
        truth, truth_definition = load_reference(reference, vol) if reference is not None else (None, None)
        lap("load_volume")
        loaded = load_model(model, device)
        bundle, meta = loaded.bundle, loaded.bundle.meta
        choice = resolve_class(meta, class_name)
        lap("load_model")
        grid = prepare(vol, meta.preprocessing, spatial_dims=meta.spatial_dims, in_channels=meta.in_channels)
        x = grid.image
        grid_codes = axis_codes(grid.affine, meta.spatial_dims)
        cam = method_for_grid(method, method_options, orientation=grid_codes, seed=seed)
        lap("preprocess")
        segmentation = meta.task == "segmentation"
        if segmentation:
            pixel_set, definition = build_pixel_set(pixels, vol, grid)
        else:
            if pixels not in ("predicted", "image"):
                raise UserError(f"--pixels applies to segmentation models; this checkpoint is a {meta.task} model")
            pixel_set, definition = parse_pixel_set("image"), "whole image (classifier)"
        target = choice.target(meta, pixel_set)
        roi = tuple(meta.patch_size) if meta.patch_size else None
        window = SlidingWindow(roi, overlap=overlap, mode=blend, batch_size=window_batch)
        probe_input = torch.zeros(1, x.shape[1], *window.roi_for(tuple(x.shape[2:])), device=device)
        layers, layer_choice = _layers(bundle.model, meta, layer, probe_input)
        labels_grid: torch.Tensor | None = None
        if segmentation:
            prediction = predict(bundle.model, x, window, progress=progress)
            lap("predict")
            bound = _bind(target, prediction, choice, definition, vol.path)
            result = sliding_window_cam(
                bundle.model, x, cam, bound, layers, window, post=post, prediction=prediction, progress=progress
            )
            maps_grid, extras_grid, stats, method_stats = result.maps, result.extras, result.stats, result.method_stats
            labels_grid = _labels_from(prediction, meta.activation)
            prediction_summary: dict[str, Any] = {}
            del result, prediction  # the stitched logits are the largest array; free them before inverting
            lap("cam")
        else:
            from medcam.api import explain

            exp = explain(bundle.model, x.to(device), cam, target, layers, relu=relu, normalize=normalize)
            maps_grid, method_stats, bound = dict(exp.maps), dict(exp.stats), exp.target
            stats = {"windows": 1, "windows_with_backward": 1, "decomposed": False}
            extras_grid = {k: dict(v) for k, v in exp.extras.items()}
            prediction_summary = _class_scores(exp.output, meta)
            del exp
            lap("cam")
        grid = grid.without_image()
        del x
        maps = {}
        for alias in list(maps_grid):
            maps[alias] = _renormalize(grid.to_source(maps_grid.pop(alias).cpu())[0], normalize)
        extras = {name: {a: grid.to_source(t.cpu())[0] for a, t in per.items()} for name, per in extras_grid.items()}
        labels = pixels_src = None
        if labels_grid is not None:
            labels = grid.to_source(labels_grid.float().cpu(), mode="nearest")[0].astype(labels_grid.numpy().dtype)
            del labels_grid
            assert bound.mask is not None
            pixels_src = grid.to_source(bound.mask.float().cpu(), mode="nearest")[0] > 0.5
            prediction_summary = _prediction_summary(labels, _segments(meta))
        lap("invert")
        primary = _primary(layers, layer)
        voxel_ml = float(np.prod(vol.spacing)) / 1000.0
        summary: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "method": {
                "name": cam.name,
                "options": _jsonable(cam.options()),
                "relu": relu,
                "normalize": normalize,
                "stats": _jsonable(readable_stats(cam, method_stats)),
            },
            "class": {"name": choice.name, "kind": choice.kind, "channels": list(choice.channels)},
            "pixel_set": {
                "definition": definition,
                "coordinates": "input voxel indices (file order)"
                if definition.startswith(("voxel", "box", "mask"))
                else "model output",
                "voxels_model_grid": int(bound.mask.sum()) if bound.mask is not None else None,
                "voxels_input_grid": int(pixels_src.sum()) if pixels_src is not None else None,
                "volume_ml": round(float(pixels_src.sum()) * voxel_ml, 4)
                if pixels_src is not None and vol.spatial_dims == 3
                else None,
            },
            "layers": {"choice": layer_choice, "explained": dict(layers), "primary": primary},
            "input": vol.describe(),
            "model": {
                "path": str(loaded.path) if loaded.path else None,
                "sha256": loaded.sha256,
                "architecture": meta.architecture,
                "task": meta.task,
                "activation": meta.activation,
                "labels": dict(meta.labels),
                "regions": {k: list(v) for k, v in meta.regions.items()},
                "patch_size": list(meta.patch_size) if meta.patch_size else None,
                "model_grid": list(grid.grid),
                "model_grid_orientation": grid_codes,
                "model_grid_affine": np.round(grid.affine, 6).tolist(),
            },
            "sliding_window": _jsonable(stats),
            "prediction": prediction_summary,
            "timings_s": timings,
            "versions": _versions(),
            "seed": seed,
            "device": device,
        }
        if len(maps) > 1 or truth is not None:
            summary["levels"] = level_summary(
                maps, paths=layers, region=pixels_src, reference=truth, reference_definition=truth_definition
            )
        window_values = meta.preprocessing
        image_window = (
            (float(window_values.a_min), float(window_values.a_max))
            if window_values.a_min is not None and window_values.a_max is not None
            else None
        )
        return VolumeExplanation(
            volume=vol,
            maps=maps,
            primary=primary,
            extras=extras,
            prediction=labels,
            pixels=pixels_src,
            segments=_segments(meta) if segmentation else {},
            summary=summary,
            image_window=image_window,
            reference=truth,
            montage=montage or Montage(),
            dicom_out=dicom_out,
        )


def _check_dicom_source(volume: Volume, dicom_out: bool | None) -> bool | None:
    """Check a DICOM series before any work: the DICOM objects must lie on its frames.

    A series with missing or unequally spaced slices is refused (its geometry as read is
    wrong); one that DICOM objects cannot reference (e.g. no frame of reference) is refused
    with ``--dicom-out`` and written without ``dicom/`` when DICOM out is automatic.
    """
    if volume.format != "dicom" or dicom_out is False:
        return dicom_out
    try:
        read_source_series(volume)
    except SeriesReferenceError as err:
        if dicom_out:
            raise
        logger.warning("%s; writing no dicom/ folder", err)
        return False
    return dicom_out


def method_for_grid(
    method: str | CAMMethod, options: Mapping[str, Any] | None, *, orientation: str, seed: int
) -> CAMMethod:
    """The method with the options that depend on the model grid filled in, unless given.

    A method that accepts ``orientation`` gets the axis codes of the model grid (after
    the checkpoint's reorientation, e.g. ``"RAS"``; the file's own, e.g. KiTS's ``"IPL"``,
    when the model keeps it), so RobustCAM's default views flip left-right and rotate in
    the axial plane whatever the input's storage order; one that accepts ``seed`` gets
    the run's ``seed``.
    """
    if not isinstance(method, str):
        return create_method(method)
    given = dict(options or {})
    accepted = method_parameters(method)
    if "orientation" in accepted:
        given.setdefault("orientation", orientation)
    if "seed" in accepted:
        given.setdefault("seed", seed)
    return create_method(method, **given)


def readable_stats(method: CAMMethod, stats: Mapping[str, Any]) -> Any:
    """The method's statistics for ``summary.json``: the first sample's, readably, if the method says how.

    A method may define ``sample_stats(stats, sample)`` (RobustCAM does); otherwise the
    statistics are written as they are.
    """
    sample_stats = getattr(method, "sample_stats", None)
    return sample_stats(stats, 0) if callable(sample_stats) and stats else stats


def _renormalize(data: np.ndarray, normalize: Any) -> np.ndarray:
    """Normalise again on the input grid, so a written min-max map spans exactly [0, 1]."""
    if normalize is None:
        return data.astype(np.float32)
    from medcam.core.ops import normalize as apply

    return apply(torch.from_numpy(np.ascontiguousarray(data))[None], normalize)[0].numpy().astype(np.float32)


def _primary(layers: Mapping[str, str], spec: str | Sequence[str]) -> str:
    if isinstance(spec, str) and spec.startswith("levels") and "bottleneck" in layers:
        return "bottleneck"
    return next(iter(layers))


def _prediction_summary(labels: np.ndarray, segments: Mapping[int, str]) -> dict[str, Any]:
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
    named = {int(v): segments.get(int(v), str(int(v)) if v else "none") for v in np.flatnonzero(counts)}
    return {"voxels_per_label": {name: int(counts[v]) for v, name in named.items()}}


def _class_scores(output: torch.Tensor, meta: CheckpointMeta) -> dict[str, Any]:
    probs = output.softmax(dim=1)[0] if meta.activation != "sigmoid" else output.sigmoid()[0]
    names = {v: k for k, v in meta.labels.items()}
    return {"probabilities": {names.get(i, str(i)): round(float(p), 6) for i, p in enumerate(probs.tolist())}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------------
# Output folders


def explain_case(
    volume: str | Path | Volume,
    out: str | Path,
    *,
    class_name: str,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Explain one image and write its review folder ``out`` (the CLI's ``--volume``/``--image``)."""
    check_output(out, overwrite=overwrite)
    return explain_volume(volume, class_name=class_name, **options).save(out, overwrite=overwrite)


# ------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class Case:
    """One image of a batch and the name of its output folder."""

    id: str
    image: Path


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def cases_from_folder(folder: str | Path) -> list[Case]:
    """Images directly in ``folder`` (nnU-Net's ``_0000`` suffix dropped) and case folders.

    A sub-folder is a case when it holds ``imaging.*`` (KiTS layout) or exactly one image,
    or is a DICOM series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--folder {folder} is not a folder")
    cases = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_image_file(entry):
            cases.append(Case(re.sub(r"_0000$", "", strip_suffix(entry.name)), entry))
        elif entry.is_dir():
            images = sorted(p for p in entry.iterdir() if is_image_file(p))
            preferred = [p for p in images if strip_suffix(p.name) == "imaging"]
            if preferred or len(images) == 1:
                cases.append(Case(entry.name, (preferred or images)[0]))
            elif not images and any(p.is_file() for p in entry.iterdir()):
                cases.append(Case(entry.name, entry))  # maybe a DICOM series; checked when read
    if not cases:
        raise UserError(f"--folder {folder} holds no images (.nii.gz, .nrrd, .mha, .png, .jpg or case folders)")
    return cases


def cases_from_datalist(path: str | Path) -> list[Case]:
    """Cases of a JSON list (paths, or objects with ``image`` and optional ``id``) or a Decathlon file.

    Paths are relative to the JSON file. A Decathlon/MONAI file contributes its
    ``training``, ``validation`` and ``test`` entries, in that order.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--datalist {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--datalist {path} is not readable JSON ({err})") from None
    if isinstance(data, Mapping):
        entries = [e for key in ("cases", "training", "validation", "test") for e in data.get(key, [])]
    elif isinstance(data, list):
        entries = data
    else:
        raise UserError(f"--datalist {path} must hold a list of cases or a Decathlon-style object")
    cases, seen = [], set()
    for entry in entries:
        image = entry.get("image") if isinstance(entry, Mapping) else entry
        if not isinstance(image, str):
            raise UserError(f"--datalist entry {entry!r} has no image path")
        full = (path.parent / image).resolve() if not Path(image).is_absolute() else Path(image)
        case_id = entry.get("id") if isinstance(entry, Mapping) and entry.get("id") else None
        if case_id is None:
            case_id = re.sub(r"_0000$", "", strip_suffix(full.name))
            if case_id == "imaging":
                case_id = full.parent.name
        if case_id in seen:
            continue
        seen.add(case_id)
        cases.append(Case(str(case_id), full))
    if not cases:
        raise UserError(f"--datalist {path} lists no cases")
    return cases


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``torchrun`` sets RANK and WORLD_SIZE)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise UserError(f"RANK/WORLD_SIZE must be integers ({err})") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return rank, world


def explain_batch(
    cases: Sequence[Case],
    out: str | Path,
    *,
    class_name: str,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    model: str | Path | ModelBundle | LoadedModel | None = None,
    device: str = "cpu",
    **options: Any,
) -> BatchReport:
    """Explain every case into ``out/<case id>``; finished cases are skipped unless ``overwrite``.

    Under ``torchrun`` each rank takes cases ``rank::world_size`` and loads its own model
    (no process group is needed). A case that fails is reported and the rest continue.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if device.startswith("cuda") and device == "cuda" and world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % max(torch.cuda.device_count(), 1)}"
    check_output(out / ".medcam-batch-probe", overwrite=True)
    mine = list(cases)[rank::world_size]
    report = BatchReport()
    loaded: LoadedModel | None = None
    for case in mine:
        target = out / case.id
        if (target / "summary.json").is_file() and not overwrite:
            report.skipped.append(case.id)
            continue
        try:
            if target.exists() and not (target / "summary.json").is_file() and not overwrite:
                raise OutputError(f"{target} exists but is not a medcam output; move it or pass --overwrite")
            if loaded is None:
                loaded = load_model(model, _check_device(device))
            explanation = explain_volume(case.image, class_name=class_name, model=loaded, device=device, **options)
            explanation.save(target, overwrite=overwrite)
            report.done.append(case.id)
        except UserError as err:
            logger.error("case %s: %s", case.id, err)
            report.failed[case.id] = str(err)
    return report


__all__ = [
    "DEFAULT_METHOD",
    "SCHEMA_VERSION",
    "BatchReport",
    "Case",
    "ClassChoice",
    "LoadedModel",
    "OutputError",
    "VolumeError",
    "VolumeExplanation",
    "build_pixel_set",
    "cases_from_datalist",
    "cases_from_folder",
    "check_output",
    "default_model_path",
    "explain_batch",
    "explain_case",
    "explain_volume",
    "inspect_model",
    "load_model",
    "load_reference",
    "rank_and_world",
    "resolve_class",
    "volume_format",
]
