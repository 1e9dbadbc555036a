"""RobustCAM: a base method's maps fused over augmentation views, with per-voxel uncertainty.

For each view (see :mod:`medcam.methods.robust.views`) the base method explains the same
target on the transformed input; each view's map, post-processed like any map of the
base method (so views are comparable), goes back to the original frame through the
view's exact inverse together with a validity mask. Over the valid views of each
voxel: the fused map (mean, or median), the uncertainty (standard deviation, ddof 0)
and the number of valid views. The fused map is then post-processed once more.
Stability metrics (mean per-voxel variance, top-10 % IoU and Spearman rho of each
view against the fused map) go to ``stats``.

The target is fixed across views: it is bound once on the original input (same class
per sample), and a segmentation pixel set M is carried into each view with the image,
so every view explains the same anatomy. The identity views are the input itself and
run first, in the pass that binds the target. The other (sample, view) rows run
batched, several sharing one forward and one backward pass; in eval mode the gradient
of the summed score is each row's own gradient, so batching changes nothing but speed.

The RobustCAM project README defines the method in 2D with
Grad-CAM; the 3D views, the validity mask and the segmentation target are ours
(docs/robustcam.md).

Why one module of this size: it is one method (views -> base -> warp back -> fuse) with
its statistics; the views (:mod:`.views`) and the sliding-window protocol (:mod:`.windows`)
live apart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from medcam.core.agreement import mean_variance, view_agreement
from medcam.core.ops import Normalization, normalize
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, Target, TargetError
from medcam.errors import UserError
from medcam.methods.base import (
    CAMMethod,
    GradientMethod,
    MethodResult,
    PostProcessing,
    WindowContext,
    WindowStitcher,
    window_combine,
)
from medcam.methods.components import create_component
from medcam.methods.robust.held_out import held_out_stability
from medcam.methods.robust.views import Identity, View, ViewError, anatomical_axes, default_views, parse_view
from medcam.methods.robust.volume_views import ViewVolumeStitcher
from medcam.methods.robust.windows import RobustStitcher

logger = logging.getLogger(__name__)

Fusion = Literal["mean", "median"]
FUSIONS: tuple[str, ...] = ("mean", "median")


def fuse(maps: Tensor, valid: Tensor, how: Fusion = "mean") -> tuple[Tensor, Tensor, Tensor]:
    """Fuse aligned views ``(N, V, *spatial)`` over the valid ones of each voxel.

    Returns ``(fused, std, count)``, each ``(N, *spatial)``: the mean (or median; the
    average of the two middle values for an even count) of the valid views, their
    standard deviation (ddof 0, about the mean) and how many views were valid. A voxel
    no view saw gets 0, 0 and 0. Accumulates in float64, returns ``maps.dtype``.
    """
    if how not in FUSIONS:
        raise UserError(f"fusion={how!r} is not known; use one of {FUSIONS}")
    # one view at a time: a few volumes of float64 memory, not V of them
    views = range(maps.shape[1])
    total = torch.zeros(maps[:, 0].shape, dtype=torch.float64, device=maps.device)
    count = torch.zeros_like(total)
    for v in views:
        total += torch.where(valid[:, v], maps[:, v].double(), 0.0)
        count += valid[:, v]
    safe = count.clamp_min(1)
    mean = total / safe
    squares = torch.zeros_like(total)
    for v in views:
        squares += torch.where(valid[:, v], (maps[:, v].double() - mean).pow(2), 0.0)
    std = (squares / safe).sqrt()
    if how == "median":
        values = maps.double()
        ordered = torch.where(valid, values, torch.full_like(values, math.inf)).sort(dim=1).values
        k = count.long().unsqueeze(1)
        last = values.shape[1] - 1
        lower = ordered.gather(1, ((k - 1) // 2).clamp(0, last)).squeeze(1)
        upper = ordered.gather(1, (k // 2).clamp(0, last)).squeeze(1)
        fused = torch.where(count > 0, (lower + upper) / 2, torch.zeros_like(mean))
    else:
        fused = mean
    return fused.to(maps.dtype), std.to(maps.dtype), count.to(maps.dtype)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def normalization_scale(maps: Tensor, mode: Normalization) -> tuple[Tensor, Tensor]:
    """``(offset, scale)`` per sample ``(N,)`` with ``normalize(maps, mode) == (maps - offset) / scale``.

    ``"minmax"``: (min, max - min); ``"max"``: (0, max); ``None``: (0, 1). A scale of 0
    stands for a map the normalisation sets to zero (constant, or max <= 0).
    """
    dims = tuple(range(1, maps.ndim))
    zero = torch.zeros(maps.shape[0], dtype=torch.float64, device=maps.device)
    if mode == "minmax":
        low = maps.amin(dim=dims).double()
        return low, maps.amax(dim=dims).double() - low
    if mode == "max":
        return zero, maps.amax(dim=dims).double().clamp_min(0)
    return zero, torch.ones_like(zero)


@runtime_checkable
class ViewTarget(Protocol):
    """A bound target that carries itself into augmentation views.

    RobustCAM moves the pixel set M of an ordinary target itself. A target with more
    spatial structure, such as the sliding-window target whose per-pixel weights must
    move with the image (:mod:`medcam.methods.robust.windows`), implements ``in_views``: the
    target of a batch of rows, row ``r`` being sample ``rows[r][0]`` seen through view
    ``rows[r][1]``.
    """

    def in_views(self, rows: Sequence[tuple[int, View]]) -> BoundTarget: ...


@dataclass(frozen=True, eq=False)
class ViewMaps:
    """Every view's map back in the original frame, before fusion (:meth:`RobustCAM.view_maps`).

    ``maps``: alias -> ``(N, V, *spatial)``, each view's map post-processed like a map of
    the base method (normalised over the view's own field) and warped back; ``valid``:
    ``(N, V, *spatial)``, where each view saw the voxel; ``offsets``/``scales``: alias ->
    ``(N, V)`` float64, the per-view normalisation ``(raw - offset) / scale`` (0 for rows
    that did not run); ``rows``: the (sample, view) pairs that ran; ``dropped``: the rows
    whose pixel set M left the view.
    """

    maps: dict[str, Tensor]
    valid: Tensor
    offsets: dict[str, Tensor]
    scales: dict[str, Tensor]
    views: list[View]
    rows: list[tuple[int, int]]
    dropped: list[dict[str, Any]]
    base: CAMMethod
    target: BoundTarget
    output: Tensor


class RobustCAM(CAMMethod):
    """Augmentation-fused explanation with per-voxel uncertainty (RobustCAM).

    Options:

    * ``base``: the method run on every view, by name or instance; ``"auto"`` is
      Grad-CAM for a classification target and HiResCAM for a segmentation target
      (a robust Seg-HiRes-Grad CAM). ``base_options`` go to its constructor.
    * ``views``: ``"default"`` (2D: identity, horizontal flip, rotation +15 deg,
      intensity jitter, blur, greyscale for colour input; 3D: identity, left-right
      flip, in-plane rotation +/-10 deg filled with the volume's minimum, intensity
      scale/shift, blur, gamma) or a list of :class:`~medcam.methods.robust.views.View`
      objects and/or view strings (``"rotate:15"``, ``"flip:0"``, ``"blur:1"``...).
      ``seed`` seeds the photometric views that do not name their own.
    * ``orientation``: axis codes of the input's spatial axes (``"RAS"``, KiTS's
      ``"IPL"``; 2D ``"PL"``, a picture as the network sees it): the default views
      then flip left-right (2D: horizontally) and rotate in the axial plane of that orientation. ``None``: axis 0
      is left-right and the plane (0, 1) axial in 3D; axis 1 is horizontal in 2D.
      ``medcam explain`` passes the model grid's orientation.
    * ``fusion``: ``"mean"`` (default) or ``"median"`` over the valid views.
    * ``batch_size``: at most this many (sample, view) rows per forward/backward
      pass; ``None`` runs all rows in one pass. Lower it for large 3D volumes.
    * ``top_fraction``: the top share of voxels compared by the stability IoU;
      ``stability=False`` skips the metrics (about one sort of the map per view).

    ``MethodResult.extras``: ``"uncertainty"`` (std over valid views, in the units of
    the per-view normalised maps) and ``"valid_views"`` (count), per layer alias at
    input resolution. ``stats``: the resolved views, dropped views and, per layer,
    the stability metrics per sample (:meth:`sample_stats` gives one sample's, readably).
    """

    name = "robustcam"

    def __init__(
        self,
        base: str | CAMMethod = "auto",
        views: str | View | Sequence[str | View] = "default",
        fusion: Fusion = "mean",
        batch_size: int | None = 6,
        seed: int = 0,
        top_fraction: float = 0.1,
        stability: bool = True,
        base_options: Mapping[str, Any] | None = None,
        orientation: str | Sequence[str] | None = None,
        held_out: bool | Sequence[str] = False,
        held_out_multiple: float = 1.0,
    ) -> None:
        if fusion not in FUSIONS:
            raise UserError(f"fusion={fusion!r} is not known; use one of {FUSIONS}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise UserError(
                f"batch_size must be a positive integer or None (all views in one pass), got {batch_size!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"seed must be an integer, got {seed!r}")
        if (
            isinstance(top_fraction, bool)
            or not isinstance(top_fraction, (int, float))
            or not 0.0 < top_fraction <= 1.0
        ):
            raise UserError(f"top_fraction must be a number in (0, 1], got {top_fraction!r}")
        if not isinstance(stability, bool):
            raise UserError(f"stability must be true or false, got {stability!r}")
        if not isinstance(base, (str, CAMMethod)):
            raise UserError(f"base must be a method name such as 'gradcam' or a method, got {base!r}")
        if isinstance(base, RobustCAM) or (isinstance(base, str) and base.lower() == self.name):
            raise UserError("RobustCAM cannot wrap itself; choose a base method such as gradcam or hirescam")
        if base_options is not None and not isinstance(base_options, Mapping):
            raise UserError(f"base_options must be a mapping of option names to values, got {base_options!r}")
        if isinstance(base, CAMMethod) and base_options:
            raise UserError("base_options apply only when base is given by name")
        if isinstance(views, View):
            views = [views]
        if isinstance(views, str):
            if views != "default":
                raise UserError(f"views={views!r}: pass 'default' or a list of views, e.g. ['identity', 'flip']")
            parsed: list[View] | None = None
        else:
            if not isinstance(views, Sequence) or not all(isinstance(v, (str, View)) for v in views):
                raise UserError(
                    f"views must be 'default' or a list of view strings, e.g. ['identity', 'flip'], got {views!r}"
                )
            parsed = [parse_view(spec, seed=seed + i) for i, spec in enumerate(views)]
            if not parsed:
                raise UserError("views is empty; pass 'default' or at least one view, e.g. ['identity']")
        if orientation is not None:
            if not isinstance(orientation, (str, Sequence)) or not all(isinstance(c, str) for c in orientation):
                raise UserError(f"orientation must be axis codes such as 'RAS' or 'IPL', got {orientation!r}")
            orientation = "".join(c.upper()[:1] for c in orientation)
            anatomical_axes(orientation)  # names the problem if the codes are not anatomical
        self.base = base
        self.base_options = dict(base_options or {})
        self.views = views
        self.fusion = fusion
        self.batch_size = batch_size
        self.seed = seed
        self.top_fraction = top_fraction
        self.stability = stability
        self.orientation = orientation
        self._parsed = parsed
        if isinstance(held_out, str) or not isinstance(held_out, (bool, Sequence)):
            raise UserError(f"held_out must be true, false or a list of view strings, got {held_out!r}")
        self.held_out: bool | list[str] = held_out if isinstance(held_out, bool) else [str(v) for v in held_out]
        if isinstance(self.held_out, list):
            for view in self.held_out:
                parse_view(view)  # names a malformed view now
        if not isinstance(held_out_multiple, (int, float)) or held_out_multiple <= 0:
            raise UserError(f"held_out_multiple must be a positive number, got {held_out_multiple!r}")
        self.held_out_multiple = float(held_out_multiple)

    def options(self) -> dict[str, Any]:
        base = self.base if isinstance(self.base, str) else self.base.name
        views = "default" if self._parsed is None else [v.describe() for v in self._parsed]
        return {
            "base": base,
            "base_options": dict(self.base_options),
            "views": views,
            "fusion": self.fusion,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "top_fraction": self.top_fraction,
            "stability": self.stability,
            "orientation": self.orientation,
            "held_out": self.held_out,
            "held_out_multiple": self.held_out_multiple,
        }

    def resolve_views(self, x: Tensor) -> list[View]:
        """The views for input ``x``, each checked against it."""
        ndim, channels = x.ndim - 2, x.shape[1]
        if self._parsed is not None:
            views = list(self._parsed)
        elif self.orientation is not None and ndim in (2, 3):
            if len(self.orientation) != ndim:
                raise ViewError(
                    f"orientation {self.orientation!r} names {len(self.orientation)} axes but the input has {ndim} "
                    "spatial axes; give one code per axis"
                )
            lr_axis, plane = anatomical_axes(self.orientation)
            views = default_views(ndim, channels, seed=self.seed, lr_axis=lr_axis, axial_plane=plane)
        else:
            views = default_views(ndim, channels, seed=self.seed)
        for view in views:
            view.check(x)
        return views

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        """The views run inside each window; fused maps, uncertainties and counts stitch (docs/robustcam.md).

        A base without per-window maps (a region method) explains each view of the whole volume over windows.
        """
        base = self.resolve_base(context.target)
        if window_combine(base) is None and base.window_stitcher(context) is not None:
            return ViewVolumeStitcher(self, context, base, normalization_scale)
        return RobustStitcher(self, context)

    def resolve_base(self, target: BoundTarget) -> CAMMethod:
        """The base method; ``"auto"``: HiResCAM for segmentation targets, Grad-CAM otherwise."""
        name = self.base
        if isinstance(name, str) and name.lower() == "auto":
            name = "hirescam" if target.is_segmentation else "gradcam"
        return create_component(name, **self.base_options) if isinstance(name, str) else name

    def _identity_pass(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> tuple[CAMMethod, BoundTarget, Tensor, dict[str, Tensor]]:
        """The identity view of every sample, which is ``x`` itself: this pass also binds the target.

        With ``base="auto"`` the base depends on the bound target; Grad-CAM and HiResCAM
        share one capture, so the capture is taken first and the base chosen after.
        """
        if isinstance(self.base, str) and self.base.lower() == "auto":
            capture = probe.capture(x, layers, target, gradients=True)
            base = self.resolve_base(capture.target)
            if not isinstance(base, GradientMethod):  # pragma: no cover - auto picks gradient methods
                raise TypeError(f"auto base {base.name} is not a gradient method")
            return base, capture.target, capture.output, base.maps(capture, tuple(x.shape[2:]), post)
        base = self.base if isinstance(self.base, CAMMethod) else create_component(self.base, **self.base_options)
        result = base.run(probe, x, target, layers, post)
        return base, result.target, result.output, result.maps

    def _chunk_target(
        self, bound: BoundTarget, chunk: list[tuple[int, int]], views: list[View], masks: Any
    ) -> BoundTarget:
        """The target of a batch of (sample, view) rows: the same class, M moved into each view."""
        if isinstance(bound, ViewTarget):
            return bound.in_views([(i, views[j]) for i, j in chunk])
        index = torch.tensor([i for i, _ in chunk], device=bound.classes.device)
        target = bound.select(index)
        if bound.is_segmentation:
            target = target.with_mask(torch.cat([masks[row] for row in chunk]))
        return target

    def view_maps(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> ViewMaps:
        """Run the base method on every view and bring each map back to the original frame.

        Each view's map is post-processed like a map of the base method: ReLU (if
        ``post.relu``) and upsampling, then ``post.normalization`` over the view's whole
        field, whose offset and scale are kept (the sliding-window RobustCAM needs them).
        """
        views = self.resolve_views(x)
        n, count, size = x.shape[0], len(views), tuple(x.shape[2:])
        raw = PostProcessing(post.relu, None)
        identity = next((j for j, view in enumerate(views) if isinstance(view, Identity)), None)
        first: dict[str, Tensor] = {}
        if identity is not None and (self.batch_size is None or n <= self.batch_size):
            base, bound, output, first = self._identity_pass(probe, x, target, layers, raw)
        else:
            # bind once on the whole batch (per-sample targets need all of it), then run every view
            identity = None
            output = probe.forward(x)
            bound = target if isinstance(target, BoundTarget) else target.bind(output)
            base = self.resolve_base(bound)
        rows, masks, dropped = self._rows(bound, views, n)

        aligned: dict[str, Tensor] = {}
        offsets: dict[str, Tensor] = {}
        scales: dict[str, Tensor] = {}
        valid = torch.zeros(n, count, *size, dtype=torch.bool)

        def collect(maps: dict[str, Tensor], done: list[tuple[int, int]], where: list[int]) -> None:
            for alias, values in maps.items():
                if alias not in aligned:
                    aligned[alias] = torch.zeros(n, count, *size, dtype=values.dtype, device=values.device)
                    offsets[alias] = torch.zeros(n, count, dtype=torch.float64)
                    scales[alias] = torch.zeros(n, count, dtype=torch.float64)
                normalized = normalize(values, post.normalization)
                offset, scale = normalization_scale(values, post.normalization)
                for (i, j), r in zip(done, where, strict=True):
                    back, ok = views[j].warp_back(normalized[r : r + 1])
                    aligned[alias][i, j] = back[0]
                    valid[i, j] = ok[0].cpu()
                    offsets[alias][i, j], scales[alias][i, j] = float(offset[r]), float(scale[r])

        if identity is not None:
            kept = [(i, j) for i, j in rows if j == identity]  # a hand-made empty M drops a row
            collect(first, kept, [i for i, _ in kept])
            rows_left = [(i, j) for i, j in rows if j != identity]
        else:
            rows_left = rows
        step = self.batch_size or max(len(rows_left), 1)
        for start in range(0, len(rows_left), step):
            chunk = rows_left[start : start + step]
            batch = torch.cat([views[j].apply(x[i : i + 1]) for i, j in chunk])
            if batch.ndim == 4:  # oneDNN runs 2D convolutions of a channels-last batch ~10 % faster
                batch = batch.contiguous(memory_format=torch.channels_last)
            result = base.run(probe, batch, self._chunk_target(bound, chunk, views, masks), layers, raw)
            collect(result.maps, chunk, list(range(len(chunk))))
        return ViewMaps(aligned, valid, offsets, scales, views, rows, dropped, base, bound, output)

    def fuse_views(self, stack: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`fuse` with this method's fusion, warning about voxels no view saw."""
        fused, std, seen = fuse(stack, valid.to(stack.device), self.fusion)
        if bool((seen == 0).any()):
            logger.warning(
                "RobustCAM: %d voxel(s) lie outside every view's field of view; their fused map is 0 "
                "(include the identity view to avoid this)",
                int((seen == 0).sum()),
            )
        return fused, std, seen

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        found = self.view_maps(probe, x, target, layers, post)
        size = tuple(x.shape[2:])
        fused_maps: dict[str, Tensor] = {}
        uncertainty: dict[str, Tensor] = {}
        valid_views: dict[str, Tensor] = {}
        stability: dict[str, Any] = {}
        for alias, stack in found.maps.items():
            fused, std, seen = self.fuse_views(stack, found.valid)
            fused_maps[alias] = post.apply(fused, size)
            uncertainty[alias] = std
            valid_views[alias] = seen
            if self.stability:
                metrics = self.agreement(stack, found.valid.to(stack.device), fused_maps[alias], found.rows)
                stability[alias] = {"mean_variance": [float(v) for v in mean_variance(std, seen)], **metrics}

        stats: dict[str, Any] = {
            "base": found.base.name,
            "fusion": self.fusion,
            "views": [v.describe() for v in found.views],
            "dropped_views": found.dropped,
            "stability": stability,
        }
        if self.held_out is not False:
            stats["held_out"] = self.held_out_comparison(probe, x, found, layers, post, fused_maps)
        return MethodResult(
            maps=fused_maps,
            target=found.target,
            output=found.output,
            extras={"uncertainty": uncertainty, "valid_views": valid_views},
            stats=stats,
        )

    def held_out_comparison(
        self,
        probe: Probe,
        x: Tensor,
        found: ViewMaps,
        layers: Mapping[str, str],
        post: PostProcessing,
        fused_maps: Mapping[str, Tensor],
    ) -> dict[str, Any]:
        """Base method vs RobustCAM under held-out views (not among the fused ones), per layer.

        Each method explains every held-out view of ``x`` (M carried along by geometric
        views), its map is warped back and compared with its own map of ``x``
        (:func:`~medcam.methods.robust.held_out.held_out_stability`); top-k counts in units
        of |M| (``held_out_multiple`` x |M|), or ``top_fraction`` of the voxels for a classifier.
        """
        bound = found.target
        views = self.held_out if isinstance(self.held_out, list) else None
        inner = RobustCAM(**{**self.options(), "held_out": False, "stability": False})
        if not isinstance(self.base, str):
            inner.base = self.base
        base_maps = found.base.run(probe, x, bound, layers, post).maps
        pixels = int(torch.Size(x.shape[2:]).numel())
        if bound.mask is not None:
            unit = [int(u) for u in bound.mask.flatten(1).sum(dim=1).tolist()]
            multiple = self.held_out_multiple
        else:
            unit, multiple = [max(1, round(self.top_fraction * pixels))] * x.shape[0], 1.0

        def target_in(view: View) -> BoundTarget:
            return bound if bound.mask is None else bound.with_mask(view.warp_mask(bound.mask))

        out: dict[str, Any] = {}
        for alias in fused_maps:
            per: dict[str, Any] = {}
            for name, method, reference in (
                ("base", found.base, base_maps[alias]),
                ("robustcam", inner, fused_maps[alias]),
            ):

                def explain_view(xv: Tensor, view: View, method: CAMMethod = method, alias: str = alias) -> Tensor:
                    return method.run(probe, xv, target_in(view), {alias: layers[alias]}, post).maps[alias]

                result = held_out_stability(explain_view, x, reference, unit=unit, views=views, multiple=multiple)
                per[name] = {
                    "variance": [float(v) for v in result.variance],
                    "spearman": [float(v) for v in result.spearman],
                    "top_k_iou": [float(v) for v in result.top_k_iou],
                }
                per["views"] = list(result.views)
            per["top_k"] = [round(multiple * u) for u in unit]
            out[alias] = per
        return out

    def _rows(
        self, bound: BoundTarget, views: list[View], samples: int
    ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], Tensor], list[dict[str, Any]]]:
        """(sample, view) rows in sample-major order, the pixel set M of each row, and dropped rows.

        A view whose warped M is empty (M left the field of view) cannot explain the
        target: that row is dropped with a warning; a sample left without rows is an error.
        """
        rows: list[tuple[int, int]] = []
        masks: dict[tuple[int, int], Tensor] = {}
        dropped: list[dict[str, Any]] = []
        for i in range(samples):
            for j, view in enumerate(views):
                if bound.mask is not None:
                    warped = view.warp_mask(bound.mask[i : i + 1])
                    if not bool(warped.any()):
                        logger.warning(
                            "RobustCAM: view %s moves the pixel set M of sample %d out of the field of view; "
                            "dropped for that sample",
                            view.describe(),
                            i,
                        )
                        dropped.append({"sample": i, "view": view.describe()})
                        continue
                    masks[(i, j)] = warped
                rows.append((i, j))
        lost = sorted(set(range(samples)) - {i for i, _ in rows})
        if lost:
            raise TargetError(
                f"every view moves the pixel set M ({bound.description}) of sample(s) {lost} out of the field "
                "of view; include the identity view, use smaller rotations or a larger pixel set"
            )
        return rows, masks, dropped

    def agreement(self, stack: Tensor, valid: Tensor, fused: Tensor, rows: list[tuple[int, int]]) -> dict[str, Any]:
        """Top-fraction IoU and Spearman rho of each view against the fused map, per sample.

        Per-view values are None for views that did not run (dropped).
        """
        n, count = stack.shape[:2]
        ious: list[list[float | None]] = [[None] * count for _ in range(n)]
        rhos: list[list[float | None]] = [[None] * count for _ in range(n)]
        for i in range(n):
            kept = [j for s, j in rows if s == i]
            iou, rho = view_agreement(stack[i, kept], fused[i], valid[i, kept], self.top_fraction)
            for j, a, b in zip(kept, iou.tolist(), rho.tolist(), strict=True):
                ious[i][j], rhos[i][j] = _finite(a), _finite(b)
        return {
            "top_iou": [_average(v) for v in ious],
            "spearman": [_average(v) for v in rhos],
            "top_fraction": self.top_fraction,
            "top_iou_per_view": ious,
            "spearman_per_view": rhos,
        }

    @staticmethod
    def sample_stats(stats: Mapping[str, Any], sample: int = 0) -> dict[str, Any]:
        """One sample's ``stats``, readably: per layer one number per metric and a row per view.

        This is what ``medcam explain`` writes to ``summary.json`` (``method.stats``).
        Values are rounded to 6 significant digits; a dropped view has ``None``.
        """
        views = list(stats.get("views", []))
        readable: dict[str, Any] = {
            key: value for key, value in stats.items() if key not in ("stability", "dropped_views")
        }
        readable["dropped_views"] = [
            {k: v for k, v in d.items() if k != "sample"}
            for d in stats.get("dropped_views", [])
            if d.get("sample", 0) == sample
        ]
        layers: dict[str, Any] = {}
        for alias, metrics in stats.get("stability", {}).items():
            ious = metrics["top_iou_per_view"][sample]
            rhos = metrics["spearman_per_view"][sample]
            layers[alias] = {
                "mean_variance": _round(metrics["mean_variance"][sample]),
                "top_iou": _round(metrics["top_iou"][sample]),
                "spearman": _round(metrics["spearman"][sample]),
                "top_fraction": metrics["top_fraction"],
                "per_view": [
                    {"view": view, "top_iou": _round(iou), "spearman": _round(rho)}
                    for view, iou, rho in zip(views, ious, rhos, strict=True)
                ],
            }
        readable["stability"] = layers
        return readable


def _average(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")
