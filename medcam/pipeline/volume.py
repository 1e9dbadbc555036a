"""One image in, maps on its own voxel grid out: ``explain_volume`` and ``explain_case``.

    checkpoint --load_model--> model + metadata (labels, regions, preprocessing, patch)
    image --load_volume--> Volume --prepare--> model grid --predict (sliding window)--> Y
    Y + --pixels--> M --sliding_window_cam (method, layers)--> maps on the model grid
      (M given and a one-class target: Y is stitched from the CAM's own window passes instead)
    maps --invert the preprocessing--> maps on the ORIGINAL grid --save--> output folder

The functions take the CLI's names: ``explain_case(volume=..., class_name=..., model=...,
method=..., pixels=..., layer=..., out=..., overwrite=..., device=...)`` is
``medcam explain --volume ... --class ... --model ... --method ... --pixels ... --layer ...
--out ... [--overwrite] --device ...``; the options may also come as one
:class:`~medcam.pipeline.options.ExplainOptions`. Pixel-set coordinates follow
:mod:`medcam.volumes.pixels` (input voxel indices).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcam.api import explain, resolve_layers
from medcam.core.precision import autocast, resolved, stages
from medcam.core.targets import BoundTarget, PixelSet, Target, TargetError, parse_pixel_set
from medcam.core.windows import SlidingWindow
from medcam.errors import UserError
from medcam.methods.base import CAMMethod
from medcam.metrics.levels import LevelRanking, summarise_levels
from medcam.models.checkpoint import CheckpointMeta
from medcam.models.classes import ClassChoice, label_dtype, labels_from_logits, resolve_class, segments
from medcam.models.levels import Level, LevelError, discover_levels, segmentation_default_level
from medcam.models.loading import LoadedModel, ModelSource, check_device, load_model
from medcam.models.nnunet import NNUNetBundle
from medcam.pipeline.nnunet import NNUNetWindow, fold_cam, predict_nnunet
from medcam.pipeline.options import ExplainOptions
from medcam.pipeline.window_prediction import own_prediction
from medcam.pipeline.windows import predict, sliding_window_cam
from medcam.review import summary as record
from medcam.review.bundle import VolumeExplanation
from medcam.review.folders import check_output
from medcam.volumes.dicom_series import check_dicom_source
from medcam.volumes.geometry import axis_codes
from medcam.volumes.io import Volume, load_volume
from medcam.volumes.nnunet_grid import NNUNetInput, prepare_nnunet
from medcam.volumes.pixels import INPUT_COORDINATES, build_pixel_set, in_input_coordinates, load_reference
from medcam.volumes.preprocessing import ModelInput, prepare


@dataclass
class _Clock:
    """Seconds per stage, for ``summary.json``'s ``timings_s``."""

    timings: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now

    def move(self, seconds: float, source: str, destination: str) -> None:
        """Count ``seconds`` of stage ``source`` under ``destination`` (work one stage did for another)."""
        self.timings[source] = round(self.timings[source] - seconds, 3)
        self.timings[destination] = round(self.timings[destination] + seconds, 3)


@dataclass
class _GridResult:
    """What the CAM stage leaves on the model grid."""

    maps: dict[str, torch.Tensor]
    extras: dict[str, dict[str, torch.Tensor]]
    bound: BoundTarget
    window_stats: dict[str, Any]
    method_stats: dict[str, Any]
    labels: torch.Tensor | None
    prediction: dict[str, Any]
    source_labels: np.ndarray | None = None  # nnU-Net's own export of the prediction, on the input grid


def explain_volume(
    volume: str | Path | Volume,
    *,
    class_name: str,
    model: ModelSource = None,
    options: ExplainOptions | None = None,
    **settings: Any,
) -> VolumeExplanation:
    """Explain ``class_name`` on one image with the checkpoint ``model`` (default: the demo model).

    ``options`` (or the same names as keywords, those of the CLI options: ``method``,
    ``method_options``, ``pixels``, ``layer``, ``levels``, ``device``, ``overlap``, ``blend``,
    ``window_batch``, ``relu``, ``normalize``, ``seed``, ``progress``, ``reference``,
    ``montage_scale``, ``montage_slices``, ``montage_crop``, ``dicom_out``; :class:`ExplainOptions`) say how.
    Returns maps on the image's own voxel grid; ``.save(out)`` writes the review folder.
    With several layers (``layer="levels"``) or a ``reference`` mask (``FILE[:LABEL]`` on
    the image's grid), ``summary["levels"]`` holds each layer's localisation numbers
    (:mod:`medcam.metrics.levels`). Torch's random state is seeded with ``seed`` for the
    call and restored afterwards.
    """
    if options is None:
        options = ExplainOptions.from_keywords(**settings)
    elif settings:
        raise TypeError(f"give explain options either as options= or as keywords, not both ({sorted(settings)})")
    return explain_and_rank(volume, class_name=class_name, model=model, options=options)[0]


def explain_and_rank(
    volume: str | Path | Volume, *, class_name: str, model: ModelSource, options: ExplainOptions
) -> tuple[VolumeExplanation, LevelRanking | None]:
    """:func:`explain_volume` and, with a ``reference``, the ranking of the explained layers (scored once)."""
    device = check_device(options.device)
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(options.seed)
        return _explain(volume, class_name, model, options, device)


def _explain(
    volume: str | Path | Volume, class_name: str, model: ModelSource, options: ExplainOptions, device: str
) -> tuple[VolumeExplanation, LevelRanking | None]:
    clock = _Clock()
    vol = volume if isinstance(volume, Volume) else load_volume(volume)
    dicom_out = check_dicom_source(vol, options.dicom_out)  # DICOM objects must lie on the source frames
    truth, truth_definition = load_reference(options.reference, vol) if options.reference is not None else (None, None)
    clock.lap("load_volume")
    loaded = load_model(model, device)
    meta = loaded.bundle.meta
    choice = resolve_class(meta, class_name)
    clock.lap("load_model")
    nnunet = loaded.bundle.source if isinstance(loaded.bundle, NNUNetBundle) else None
    named = nnunet.labels.segments() if nnunet is not None else segments(meta)
    grid: ModelInput | NNUNetInput
    if nnunet is not None:  # nnU-Net's own reader, preprocessing and export (docs/nnunet.md)
        grid = prepare_nnunet(vol, nnunet)
    else:
        grid = prepare(vol, meta.preprocessing, spatial_dims=meta.spatial_dims, in_channels=meta.in_channels)
    grid_codes = axis_codes(grid.affine, meta.spatial_dims)
    cam = options.method_for_grid(orientation=grid_codes)
    clock.lap("preprocess")
    pixel_set, definition = _pixel_set(options.pixels, vol, grid, meta)
    target = choice.target(meta, pixel_set)
    window = _window(loaded, options)
    probe_input = torch.zeros(1, grid.image.shape[1], *window.roi_for(tuple(grid.image.shape[2:])), device=device)
    layers, layer_choice = _layers(loaded, options.layer, probe_input)
    on_grid = _cam(loaded, grid, cam, target, layers, options, choice, definition, vol.path, device, clock)
    grid = grid.without_image()  # the model input is no longer needed
    maps = {}
    for alias in list(on_grid.maps):  # one map at a time: each inverse is a volume-sized array
        maps[alias] = _renormalize(grid.to_source(on_grid.maps.pop(alias).cpu())[0], options)
    extras = {name: {a: grid.to_source(t.cpu())[0] for a, t in per.items()} for name, per in on_grid.extras.items()}
    labels = pixels_src = None
    prediction = on_grid.prediction
    if on_grid.labels is not None:
        if on_grid.source_labels is not None:
            labels = on_grid.source_labels.astype(on_grid.labels.numpy().dtype)
        else:
            labels = grid.to_source(on_grid.labels.float().cpu(), mode="nearest")[0].astype(
                on_grid.labels.numpy().dtype
            )
        assert on_grid.bound.mask is not None
        pixels_src = grid.to_source(on_grid.bound.mask.float().cpu(), mode="nearest")[0] > 0.5
        prediction = record.prediction_summary(labels, named)
    clock.lap("invert")
    primary = _primary(layers, options.layer)
    mask = on_grid.bound.mask
    summary: dict[str, Any] = {
        "schema_version": record.SCHEMA_VERSION,
        "method": record.method_entry(
            cam, relu=options.relu, normalize=options.normalize, stats=readable_stats(cam, on_grid.method_stats)
        ),
        "class": {"name": choice.name, "kind": choice.kind, "channels": list(choice.channels)},
        "pixel_set": record.pixel_set_entry(
            definition,
            coordinates=INPUT_COORDINATES if in_input_coordinates(definition) else "model output",
            model_voxels=int(mask.sum()) if mask is not None else None,
            input_mask=pixels_src,
            spacing=vol.spacing,
            spatial_dims=vol.spatial_dims,
        ),
        "layers": {"choice": layer_choice, "explained": dict(layers), "primary": primary},
        "input": vol.describe(),
        "model": record.model_entry(
            meta,
            path=str(loaded.path) if loaded.path else None,
            sha256=loaded.sha256,
            grid=grid.grid,
            orientation=grid_codes,
            affine=grid.affine,
        ),
        "sliding_window": record.jsonable(on_grid.window_stats),
        "prediction": prediction,
        "timings_s": clock.timings,
        "versions": record.versions(),
        "seed": options.seed,
        "device": device,
        "precision": resolved(torch.device(device), options.precision),
    }
    ranking = None
    if len(maps) > 1 or truth is not None:
        summary["levels"], ranking = summarise_levels(
            maps, layers, pixels_src, truth, truth_definition, options.level_threshold, options.rank_by
        )
    window_values = meta.preprocessing
    image_window = (
        (float(window_values.a_min), float(window_values.a_max))
        if window_values.a_min is not None and window_values.a_max is not None
        else None
    )
    explanation = VolumeExplanation(
        volume=vol,
        maps=maps,
        primary=primary,
        extras=extras,
        prediction=labels,
        pixels=pixels_src,
        segments=named if meta.task == "segmentation" else {},
        summary=summary,
        image_window=image_window,
        reference=truth,
        montage=options.montage,
        dicom_out=dicom_out,
    )
    return explanation, ranking


def _pixel_set(spec: str, volume: Volume, grid: ModelInput | NNUNetInput, meta: CheckpointMeta) -> tuple[PixelSet, str]:
    if meta.task == "segmentation":
        return build_pixel_set(spec, volume, grid)
    if spec not in ("predicted", "image"):
        raise UserError(f"--pixels applies to segmentation models; this checkpoint is a {meta.task} model")
    return parse_pixel_set("image"), "whole image (classifier)"


def _layers(loaded: LoadedModel, layer: str | Sequence[str], probe: torch.Tensor) -> tuple[dict[str, str], str]:
    """The layers to explain: the checkpoint's own default for ``auto`` when it names one."""
    model, meta = loaded.bundle.model, loaded.bundle.meta
    if isinstance(layer, str) and layer == "auto" and meta.cam_layers:
        try:
            levels = {lv.name: lv.path for lv in discover_levels(model)}
        except LevelError:
            levels = {}
        chosen = {name: levels.get(name, name) for name in meta.cam_layers}
        mapping, _ = resolve_layers(model, chosen, probe)
        return mapping, f"checkpoint default: {', '.join(meta.cam_layers)}"
    return resolve_layers(model, layer, probe)


def _window(loaded: LoadedModel, options: ExplainOptions) -> SlidingWindow:
    """The sliding window: nnU-Net's tiles (step 0.5, not ``overlap``) for nnU-Net models."""
    if isinstance(loaded.bundle, NNUNetBundle):
        return NNUNetWindow(loaded.bundle.meta.patch_size, mode=options.blend, batch_size=options.window_batch)
    return options.window(loaded.bundle.meta.patch_size)


def _cam(
    loaded: LoadedModel,
    grid: ModelInput | NNUNetInput,
    cam: CAMMethod,
    target: Target,
    layers: Mapping[str, str],
    options: ExplainOptions,
    choice: ClassChoice,
    definition: str,
    path: Path,
    device: str,
    clock: _Clock,
) -> _GridResult:
    """Predict and explain on the model grid: window by window for segmentation, whole for classifiers."""
    model, meta, x = loaded.bundle.model, loaded.bundle.meta, grid.image
    if meta.task == "segmentation":
        window = _window(loaded, options)
        nnunet = isinstance(window, NNUNetWindow)
        for_prediction, for_cam = stages(torch.device(device), options.precision)
        if not nnunet and for_prediction == for_cam and own_prediction(target):
            # the CAM pass stitches the prediction from its own windows (pipeline/window_prediction.py);
            # not when the two stages run in different precisions (--precision auto with native bfloat16)
            clock.lap("predict")
            with autocast(device, for_cam):
                result = sliding_window_cam(
                    model, x, cam, target, layers, window, post=options.post, progress=options.progress
                )
            prediction, bound = result.output, result.target
        else:
            with autocast(device, for_prediction):
                if isinstance(window, NNUNetWindow):
                    prediction = predict_nnunet(model, x.to(device), window).to(x.device)
                else:
                    prediction = predict(model, x, window, progress=options.progress)
            clock.lap("predict")
            bound = _bind(target, prediction, choice, definition, path)
            explain_windows = fold_cam if nnunet else sliding_window_cam  # fold_cam: every fold's copy of a layer
            with autocast(device, for_cam):
                result = explain_windows(
                    model,
                    x,
                    cam,
                    bound,
                    layers,
                    window,
                    post=options.post,
                    prediction=prediction,
                    progress=options.progress,
                )
        labels = labels_from_logits(prediction, meta.activation, dtype=label_dtype(prediction.shape[1]))
        # the segmentation nnUNetv2_predict writes, made from the logits by nnU-Net's export
        exported = grid.segmentation_to_source(prediction) if isinstance(grid, NNUNetInput) else None
        del prediction  # the stitched logits are the largest array; free them before inverting
        clock.lap("cam")
        clock.move(result.prediction_seconds, "cam", "predict")  # passes the CAM stage ran for the prediction
        return _GridResult(result.maps, result.extras, bound, result.stats, result.method_stats, labels, {}, exported)
    with autocast(device, stages(torch.device(device), options.precision)[1]):
        exp = explain(model, x.to(device), cam, target, layers, relu=options.relu, normalize=options.normalization)
    stats = {"windows": 1, "windows_with_backward": 1, "decomposed": False}
    extras = {k: dict(v) for k, v in exp.extras.items()}
    clock.lap("cam")
    return _GridResult(
        dict(exp.maps), extras, exp.target, stats, dict(exp.stats), None, record.class_scores(exp.output, meta)
    )


def _bind(target: Target, output: torch.Tensor, choice: ClassChoice, definition: str, path: Path) -> BoundTarget:
    try:
        return target.bind(output)
    except TargetError as err:
        if "is empty" not in str(err):
            raise
        raise TargetError(
            f"the pixel set M ({definition}) is empty: the model predicts no {choice.name} voxels in {path.name}; "
            "choose M with --pixels, e.g. --pixels prob>0.1, --pixels box:i0,j0,k0:i1,j1,k1 or --pixels image"
        ) from None


def readable_stats(method: CAMMethod, stats: Mapping[str, Any]) -> Any:
    """The method's statistics for ``summary.json``: the first sample's, readably, if the method says how.

    A method may define ``sample_stats(stats, sample)`` (RobustCAM does); otherwise the
    statistics are written as they are.
    """
    sample_stats = getattr(method, "sample_stats", None)
    return sample_stats(stats, 0) if callable(sample_stats) and stats else stats


def _renormalize(data: np.ndarray, options: ExplainOptions) -> np.ndarray:
    """Normalise again on the input grid, so a written min-max map spans exactly [0, 1]."""
    if options.normalization is None:
        return data.astype(np.float32)
    from medcam.core.ops import normalize as apply

    scaled = apply(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None], options.normalization)
    return scaled[0].numpy()  # float32 already: no second volume-sized copy


def _primary(layers: Mapping[str, str], spec: str | Sequence[str]) -> str:
    """The level written as heatmap.nii.gz: with ``levels``, the one ``auto`` would explain (docs/levels.md)."""
    if isinstance(spec, str) and spec.startswith("levels"):
        chosen = segmentation_default_level([Level(name, path) for name, path in layers.items()])
        if chosen is not None:
            return chosen.name
        if "bottleneck" in layers:
            return "bottleneck"
    return next(iter(layers))


def explain_case(
    volume: str | Path | Volume,
    out: str | Path,
    *,
    class_name: str,
    overwrite: bool = False,
    model: ModelSource = None,
    options: ExplainOptions | None = None,
    **settings: Any,
) -> Path:
    """Explain one image and write its review folder ``out`` (the CLI's ``--volume``/``--image``)."""
    inputs = [v for v in (volume, model) if isinstance(v, (str, Path))]
    check_output(out, overwrite=overwrite, inputs=inputs)
    explanation = explain_volume(volume, class_name=class_name, model=model, options=options, **settings)
    return explanation.save(out, overwrite=overwrite)
