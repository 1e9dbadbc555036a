"""nnU-Net's sliding window: its tile positions, its gaussian, its mirroring, in medcam's window layout.

``nnUNetPredictor`` pads a volume smaller than the patch (half below, half above),
places tiles with ``compute_steps_for_sliding_window`` (step 0.5 of the patch, spread
evenly to the border), weights each tile with ``compute_gaussian`` (sigma 1/8 of the
patch) and divides by the summed weights. :class:`NNUNetWindow` gives exactly those
windows and weights as a :class:`~medcam.core.windows.WindowLayout`, so the sliding-window
CAM runs on nnU-Net's tiles; :func:`predict_nnunet` stitches the logits the same way,
in float16 as nnU-Net does (on the CPU the logits equal ``nnUNetPredictor``'s exactly).
:func:`fold_cam` explains the ensemble's logit over every fold's and mirror's copy of a
layer. The CAM weights its tiles with the
same float16 gaussian in float32.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from medcam.core.hooks import evaluation_mode, select_output
from medcam.core.ops import finalize
from medcam.core.targets import BoundTarget
from medcam.core.windows import SlidingWindow, WindowLayout
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, PostProcessing, window_combine
from medcam.models.nnunet_ensembles import FlipView, FoldEnsemble, MirrorEnsemble
from medcam.pipeline.windows import WindowCAMResult, sliding_window_cam


@dataclass(frozen=True)
class NNUNetWindow(SlidingWindow):
    """nnU-Net's tiling and gaussian; ``overlap`` is 1 - nnU-Net's tile step size (default step 0.5)."""

    overlap: float = 0.5

    @property
    def step_size(self) -> float:
        return 1.0 - self.overlap

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overlap >= 1.0:
            raise UserError(f"nnU-Net's tile step size must be in (0, 1], got {self.step_size}")

    def layout(self, spatial: tuple[int, ...], device: torch.device | str = "cpu") -> WindowLayout:
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

        roi = self.roi_for(spatial)
        padded = tuple(max(s, r) for s, r in zip(spatial, roi, strict=True))
        pad: list[int] = []  # F.pad order, last axis first: (below, above), as acvl's pad_nd_image splits it
        for s, r in reversed(list(zip(spatial, roi, strict=True))):
            diff = max(r - s, 0)
            pad += [diff // 2, diff - diff // 2]
        # nnU-Net's 2d models (depth-1 windows here) predict every slice; tiles are placed in-plane
        steps: list[list[int]] = [list(range(p)) if r == 1 else [] for p, r in zip(padded, roi, strict=True)]
        plane = [a for a, r in enumerate(roi) if r != 1]
        placed = compute_steps_for_sliding_window([padded[a] for a in plane], [roi[a] for a in plane], self.step_size)
        for axis, found in zip(plane, placed, strict=True):
            steps[axis] = [int(v) for v in found]
        slices = [
            tuple(slice(int(start), int(start) + r) for start, r in zip(corner, roi, strict=True))
            for corner in itertools.product(*steps)
        ]
        if self.mode == "gaussian":
            # float16 as nnU-Net computes it: where the gaussian underflows (tile corners) nnU-Net uses the
            # smallest float16 weight, which sets how tiles blend there
            half = compute_gaussian(
                tuple(roi[a] for a in plane),
                sigma_scale=1.0 / 8,
                value_scaling_factor=10,
                dtype=torch.float16,
                device=torch.device("cpu"),
            )
            importance = half.reshape(roi).to(device=device, dtype=torch.float32)
        else:
            importance = torch.ones(roi, dtype=torch.float32, device=device)
        return WindowLayout(spatial, roi, padded, tuple(pad), slices, importance)


def predict_nnunet(model: nn.Module, x: Tensor, window: NNUNetWindow) -> Tensor:
    """Stitched logits of ``x`` ``(N, C, *spatial)`` on nnU-Net's tiles, on ``x``'s device.

    Accumulated in float16 as ``nnUNetPredictor`` accumulates them: where every tile
    weight is a float16 subnormal (tile corners) the float16 sums differ from float32
    ones by whole tenths of a logit, and nnU-Net's labels come from those sums.
    Folds are stitched one by one and averaged in float16, as nnU-Net does; mirroring
    is the model's own (:class:`~medcam.models.nnunet_ensembles.MirrorEnsemble`).
    Returned as float32.
    """
    if isinstance(model, FoldEnsemble):  # nnU-Net stitches each fold, then averages them in float16
        total_folds = predict_nnunet(model.folds[0], x, window).half()
        for network in model.folds[1:]:
            total_folds += predict_nnunet(network, x, window).half()
        return (total_folds / len(model.folds)).float()
    layout = window.layout(tuple(x.shape[2:]), device=x.device)
    device = next((p.device for p in model.parameters()), x.device)
    padded = layout.pad_input(x)
    gaussian = layout.importance.to(x.device)
    weights = torch.zeros(layout.padded, dtype=torch.float16, device=x.device)
    total: Tensor | None = None
    with torch.no_grad(), evaluation_mode(model):
        for corner in layout.slices:
            patch = padded[(slice(None), slice(None), *corner)].to(device)
            out = select_output(model(patch)).float().to(x.device)
            if total is None:
                total = torch.zeros((x.shape[0], out.shape[1], *layout.padded), dtype=torch.float16, device=x.device)
            total[(slice(None), slice(None), *corner)] += out * gaussian
            weights[corner] += gaussian.half()
    assert total is not None
    stitched = torch.div(total, weights)
    return stitched[(slice(None), slice(None), *layout.crop)].float().contiguous()


_COPY_PATH = re.compile(r"^(?:folds\.(?P<fold>\d+)\.)?(?:mirrors\.(?P<mirror>\d+)\.)?(?P<inner>.+)$")


def _copies(model: nn.Module, path: str) -> list[tuple[str, tuple[int, ...]]] | None:
    """Every fold's and mirror's copy of the layer at ``path``: (module path, flipped dims).

    ``None`` when ``path`` is not inside the first fold / first mirror of an ensemble.
    """
    match = _COPY_PATH.match(path)
    folds = list(model.folds) if isinstance(model, FoldEnsemble) else [model]
    prefix = "folds.{k}." if isinstance(model, FoldEnsemble) else ""
    if match is None or (match["fold"] or "0") != "0" or (match["mirror"] or "0") != "0":
        return None
    if bool(match["fold"]) != isinstance(model, FoldEnsemble):
        return None
    copies = []
    for k, fold in enumerate(folds):
        if isinstance(fold, MirrorEnsemble):
            if not match["mirror"]:
                return None
            for m, dims in enumerate(fold.flips):
                copies.append((f"{prefix.format(k=k)}mirrors.{m}.{match['inner']}", dims))
        else:
            if match["mirror"]:
                return None
            copies.append((f"{prefix.format(k=k)}{match['inner']}", ()))
    return copies if len(copies) > 1 else None


@contextlib.contextmanager
def _flip_views(model: nn.Module, copies: list[tuple[str, tuple[int, ...]]]) -> Iterator[list[str]]:
    """Wrap each mirrored copy's layer in a :class:`FlipView` for the call; yields the paths to hook."""
    installed = []
    paths = []
    try:
        for path, dims in copies:
            if not dims:
                paths.append(path)
                continue
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            original = getattr(parent, name)
            setattr(parent, name, FlipView(original, dims))
            installed.append((parent, name, original))
            paths.append(f"{path}.view")
        yield paths
    finally:
        for parent, name, original in reversed(installed):
            setattr(parent, name, original)


def fold_cam(
    model: nn.Module,
    x: Tensor,
    method: CAMMethod,
    bound: BoundTarget,
    layers: Mapping[str, str],
    window: SlidingWindow,
    *,
    post: PostProcessing,
    prediction: Tensor,
    progress: bool = False,
) -> WindowCAMResult:
    """Sliding-window CAM of nnU-Net's ensemble logit (mean over folds and mirrors).

    A layer given in the first copy (``folds.0.mirrors.0.encoder.stages.4``) is hooked in
    every fold and every mirrored copy, each seen in the input's orientation
    (:class:`FlipView`), and the maps are summed before ReLU and normalisation: for the
    gradient methods a map is a sum over channels of weight x activation, so the sum is
    the map of all copies' channels taken together, i.e. of the score nnU-Net averages,
    with its exact gradient, in one backward pass. Methods that are not window-decomposable
    explain the layer as given.
    """
    copies = {alias: _copies(model, path) for alias, path in layers.items()}
    if window_combine(method) is None or not all(copies.values()):
        return sliding_window_cam(
            model, x, method, bound, layers, window, post=post, prediction=prediction, progress=progress
        )
    with contextlib.ExitStack() as stack:
        expanded = {}
        for alias, found in copies.items():
            assert found is not None
            for index, path in enumerate(stack.enter_context(_flip_views(model, found))):
                expanded[f"{alias}@{index}"] = path
        raw = sliding_window_cam(
            model,
            x,
            method,
            bound,
            expanded,
            window,
            post=PostProcessing(relu=False, normalization=None),
            prediction=prediction,
            progress=progress,
        )
    spatial = tuple(int(s) for s in x.shape[2:])
    maps = {}
    for alias, found in copies.items():
        assert found is not None
        total = raw.maps.pop(f"{alias}@0")
        for index in range(1, len(found)):
            total = total + raw.maps.pop(f"{alias}@{index}")
        maps[alias] = finalize(total, spatial, relu=post.relu, normalization=post.normalization)
    summed = len(next(iter(copies.values())) or [])
    return replace(raw, maps=maps, stats={**raw.stats, "copies_summed": summed})
