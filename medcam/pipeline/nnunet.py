"""nnU-Net's sliding window: its tile positions, its gaussian, its mirroring, in medcam's window layout.

``nnUNetPredictor`` pads a volume smaller than the patch (half below, half above),
places tiles with ``compute_steps_for_sliding_window`` (step 0.5 of the patch, spread
evenly to the border), weights each tile with ``compute_gaussian`` (sigma 1/8 of the
patch) and divides by the summed weights. :class:`NNUNetWindow` gives exactly those
windows and weights as a :class:`~medcam.core.windows.WindowLayout`, so the sliding-window
CAM runs on nnU-Net's tiles; :func:`predict_nnunet` stitches the logits the same way,
in float16 as nnU-Net does (on the CPU the logits equal ``nnUNetPredictor``'s exactly).
:func:`fold_cam` explains the ensemble's logit over every fold's and mirror's copy of a
layer. The CAM weights its tiles with the same float16 gaussian in float32. Both run
fold after fold, one fold's weights in memory at a time
(:class:`~medcam.models.nnunet_ensembles.FoldEnsemble`).
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
from medcam.models.nnunet_ensembles import FlipView, FoldEnsemble, MirrorEnsemble, full_resolution
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
        total_folds: Tensor | None = None
        for index in range(len(model.folds)):
            with model.fold(index) as network:  # one fold's weights in memory at a time
                stitched = predict_nnunet(network, x, window).half()
            if total_folds is None:
                total_folds = stitched
            else:
                total_folds += stitched
        assert total_folds is not None
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
_IN_FOLD = re.compile(r"^folds\.(?P<fold>\d+)\.(?P<inner>.+)$")

# a copy of a layer: (fold index, 0 for a single network; module path inside the fold; dims its mirror flips)
Copy = tuple[int, str, tuple[int, ...]]


def _copies(model: nn.Module, path: str) -> list[Copy] | None:
    """Every fold's and mirror's copy of the layer at ``path``, fold by fold, mirrors in nnU-Net's order.

    ``None`` when ``path`` is not inside the first fold / first mirror of an ensemble.
    """
    match = _COPY_PATH.match(path)
    folds = list(model.folds) if isinstance(model, FoldEnsemble) else [model]
    if match is None or (match["fold"] or "0") != "0" or (match["mirror"] or "0") != "0":
        return None
    if bool(match["fold"]) != isinstance(model, FoldEnsemble):
        return None
    copies: list[Copy] = []
    for k, fold in enumerate(folds):
        if isinstance(fold, MirrorEnsemble):
            if not match["mirror"]:
                return None
            copies += [(k, f"mirrors.{m}.{match['inner']}", dims) for m, dims in enumerate(fold.flips)]
        else:
            if match["mirror"]:
                return None
            copies.append((k, match["inner"], ()))
    return copies if len(copies) > 1 else None


def _as_given(model: FoldEnsemble, path: str) -> list[Copy] | None:
    """The one copy ``path`` names inside a fold of ``model`` (hooked as it is, mirrored or not)."""
    match = _IN_FOLD.match(path)
    if match is None or int(match["fold"]) >= len(model.folds):
        return None
    return [(int(match["fold"]), match["inner"], ())]


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


class FoldShare(nn.Module):
    """One fold's share of nnU-Net's fold-mean logit: the fold's output divided by the number of folds.

    The fold mean is linear, so a linear window target's gradient reaches this fold's
    layers exactly as it reaches them in the whole :class:`FoldEnsemble` (the same
    division of the same numbers), and no other fold needs to be in memory.
    """

    def __init__(self, network: nn.Module, folds: int) -> None:
        super().__init__()
        self.network = network
        self.folds = folds

    def forward(self, x: Tensor) -> Tensor:
        return full_resolution(self.network(x)) / self.folds


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
    with its exact gradient. The folds run one after the other, each alone in memory as
    its :class:`FoldShare` of the score (the copies are added in the same order, so the
    result is the one a single pass over every fold gives). A layer named in another copy
    is explained as named. Methods that are not window-decomposable explain the layer as
    named, on the whole ensemble with every fold loaded (they score it on every pass).
    """
    copies = {alias: _copies(model, path) for alias, path in layers.items()}
    summed = all(copies.values())
    if window_combine(method) is not None and isinstance(model, FoldEnsemble):
        plan = copies if summed else {alias: _as_given(model, path) for alias, path in layers.items()}
        if all(plan.values()):
            return _fold_by_fold(model, x, method, bound, plan, window, post, prediction, progress, summed)
    if window_combine(method) is None or not summed:
        every_fold = model.resident() if isinstance(model, FoldEnsemble) else contextlib.nullcontext()
        with every_fold:
            return sliding_window_cam(
                model, x, method, bound, layers, window, post=post, prediction=prediction, progress=progress
            )
    totals: dict[str, Tensor] = {}
    found = {alias: [(path, dims) for _, path, dims in c or []] for alias, c in copies.items()}
    raw = _add_copies(model, x, method, bound, found, window, prediction, progress, totals)
    return _finish(raw, totals, x, post, len(next(iter(found.values()))))


def _fold_by_fold(
    model: FoldEnsemble,
    x: Tensor,
    method: CAMMethod,
    bound: BoundTarget,
    plan: Mapping[str, list[Copy] | None],
    window: SlidingWindow,
    post: PostProcessing,
    prediction: Tensor,
    progress: bool,
    summed: bool,
) -> WindowCAMResult:
    """Each fold's copies on its :class:`FoldShare`, one fold in memory at a time, added in fold order."""
    totals: dict[str, Tensor] = {}
    raw: WindowCAMResult | None = None
    for index in range(len(model.folds)):
        mine = {
            alias: [(f"network.{path}", dims) for k, path, dims in copies or [] if k == index]
            for alias, copies in plan.items()
        }
        mine = {alias: c for alias, c in mine.items() if c}
        if not mine:
            continue  # no layer of this fold is explained: it is never loaded
        with model.fold(index) as network:
            share = FoldShare(network, len(model.folds))
            raw = _add_copies(share, x, method, bound, mine, window, prediction, progress, totals)
    assert raw is not None
    return _finish(raw, totals, x, post, len(next(iter(plan.values())) or []) if summed else None)


def _add_copies(
    model: nn.Module,
    x: Tensor,
    method: CAMMethod,
    bound: BoundTarget,
    copies: Mapping[str, list[tuple[str, tuple[int, ...]]]],
    window: SlidingWindow,
    prediction: Tensor,
    progress: bool,
    totals: dict[str, Tensor],
) -> WindowCAMResult:
    """One window pass hooking every copy; each copy's raw map is added to ``totals`` in copy order."""
    with contextlib.ExitStack() as stack:
        expanded = {}
        for alias, found in copies.items():
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
    for alias, found in copies.items():
        for index in range(len(found)):
            part = raw.maps.pop(f"{alias}@{index}")
            totals[alias] = totals[alias] + part if alias in totals else part
    return raw


def _finish(
    raw: WindowCAMResult, totals: dict[str, Tensor], x: Tensor, post: PostProcessing, summed: int | None
) -> WindowCAMResult:
    """ReLU and normalisation of the added maps; ``copies_summed`` in the window statistics when copies were added."""
    spatial = tuple(int(s) for s in x.shape[2:])
    maps = {
        alias: finalize(total, spatial, relu=post.relu, normalization=post.normalization)
        for alias, total in totals.items()
    }
    stats = {**raw.stats, "copies_summed": summed} if summed is not None else raw.stats
    return replace(raw, maps=maps, stats=stats)
