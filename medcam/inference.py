"""Sliding-window prediction and sliding-window CAM for volumes larger than the model's patch.

Prediction is MONAI's ``sliding_window_inference``: the stitched output is the
importance-weighted average of the window outputs,

    Y(p) = sum_w imp_w(p) y_w(p) / norm(p),      norm(p) = sum_w imp_w(p).

A segmentation target explains ``S = sum over p in M of f(Y(p))`` (``f`` the class
logit, or the logsumexp of a region's logits). Its exact gradient with respect to the
activations of window ``w`` is the gradient of the window score

    S_w = sum over p in (M and w), channels c of  imp_w(p) / norm(p) * df/dY_c(p) * y_w,c(p)

with ``df/dY`` taken at the stitched ``Y`` (for one class it is 1 on that class and
0 elsewhere, which is METHODS.md's weight_w(p) / norm(p) * logit_c,w(p)). So each
window that intersects M gets one forward and one backward pass with that linear
target; windows that miss M are skipped. The per-window raw maps are upsampled to the
window and summed on the model grid: HiResCAM (sum_k G_k A_k) is thereby stitched
exactly; Grad-CAM, Grad-CAM++ and XGrad-CAM use channel weights computed per window.
ReLU and normalisation come after stitching, so the order is channel sum -> upsample
(per window) -> sum over windows -> ReLU -> normalise. With one window covering the
volume the raw map equals ``medcam.explain(..., relu=False, normalize=None)``.

RobustCAM runs its augmentation views per window and stitches the per-window fused
maps, uncertainties and valid-view counts (:mod:`medcam.robust_windows`). Other
methods that are not decomposable this way (region and fusion methods score whole
inputs) run once on the whole padded volume when it fits in one window,
and otherwise stop with an error that says so. A method states its kind with the
class attribute ``window_decomposable``; without it, a :class:`GradientMethod` that
keeps the standard ``run`` (one capture, then ``combine``) is decomposable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode, select_output
from medcam.core.ops import finalize, upsample
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, Target
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, GradientMethod, PostProcessing
from medcam.methods.robust import RobustCAM

logger = logging.getLogger(__name__)

Combine = Callable[[Tensor, Tensor], Tensor]


class WindowError(UserError):
    """A method cannot be computed window by window on a volume larger than one window."""


@dataclass(frozen=True)
class SlidingWindow:
    """How a volume is cut into windows (MONAI's ``sliding_window_inference`` parameters).

    ``roi_size=None`` uses one window of the whole volume. ``mode`` is the blending:
    ``"gaussian"`` (default; nnU-Net's choice, low weight at window borders) or
    ``"constant"``.
    """

    roi_size: tuple[int, ...] | None = None
    overlap: float = 0.25
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 1
    padding_mode: str = "constant"
    cval: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise UserError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in ("gaussian", "constant"):
            raise UserError(f"blend mode must be 'gaussian' or 'constant', got {self.mode!r}")
        if self.batch_size < 1:
            raise UserError(f"window batch size must be at least 1, got {self.batch_size}")

    def roi_for(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.roi_size is None:
            return spatial
        if len(self.roi_size) != len(spatial):
            raise UserError(f"window size {self.roi_size} does not fit a {len(spatial)}D input {spatial}")
        return tuple(int(r) if r and r > 0 else int(s) for r, s in zip(self.roi_size, spatial, strict=True))

    def layout(self, spatial: tuple[int, ...], device: torch.device | str = "cpu") -> WindowLayout:
        """Window positions and weights exactly as ``sliding_window_inference`` places them."""
        from monai.data.utils import compute_importance_map, dense_patch_slices

        roi = self.roi_for(spatial)
        padded = tuple(max(s, r) for s, r in zip(spatial, roi, strict=True))
        # F.pad order: last axis first; (before, after) per axis, as MONAI does
        pad: list[int] = []
        for s, r in reversed(list(zip(spatial, roi, strict=True))):
            diff = max(r - s, 0)
            pad += [diff // 2, diff - diff // 2]
        interval = tuple(r if r == s else max(int(r * (1 - self.overlap)), 1) for s, r in zip(padded, roi, strict=True))
        slices = dense_patch_slices(padded, roi, interval)
        importance = compute_importance_map(
            roi, mode=self.mode, sigma_scale=self.sigma_scale, device=device, dtype=torch.float32
        )
        return WindowLayout(spatial, roi, padded, tuple(pad), [tuple(s) for s in slices], importance)


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """Windows over a (padded) volume: ``slices`` index the padded grid."""

    spatial: tuple[int, ...]
    roi: tuple[int, ...]
    padded: tuple[int, ...]
    pad: tuple[int, ...]
    slices: list[tuple[slice, ...]]
    importance: Tensor

    @property
    def crop(self) -> tuple[slice, ...]:
        """Slices of the padded grid that hold the original volume."""
        befores = self.pad[::2][::-1]
        return tuple(slice(b, b + s) for b, s in zip(befores, self.spatial, strict=True))

    def pad_input(self, x: Tensor, mode: str = "constant", value: float = 0.0) -> Tensor:
        if not any(self.pad):
            return x
        return F.pad(x, list(self.pad), mode=mode, value=value)

    def pad_like(self, t: Tensor) -> Tensor:
        """Zero-pad a tensor ``(N, ..., *spatial)`` onto the padded grid."""
        if not any(self.pad):
            return t
        return F.pad(t, list(self.pad))

    def norm(self) -> Tensor:
        """sum over windows of their importance, on the padded grid (MONAI's count map)."""
        count = torch.zeros(self.padded, dtype=torch.float32, device=self.importance.device)
        for window in self.slices:
            count[window] += self.importance
        return count


def predict(
    model: nn.Module,
    x: Tensor,
    window: SlidingWindow,
    *,
    output: OutputSelector = None,
    progress: bool = False,
) -> Tensor:
    """The stitched model output for ``x`` ``(N, C, *spatial)``, on ``x``'s device, no gradients."""
    from monai.inferers import sliding_window_inference

    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(patch: Tensor) -> Tensor:
        return select_output(model(patch), output)

    roi = window.roi_for(tuple(x.shape[2:]))
    with torch.no_grad(), evaluation_mode(model):
        result = sliding_window_inference(
            x,
            roi,
            window.batch_size,
            run,
            overlap=window.overlap,
            mode=window.mode,
            sigma_scale=window.sigma_scale,
            padding_mode=window.padding_mode,
            cval=window.cval,
            sw_device=device,
            device=x.device,
            progress=progress,
        )
    out = result if isinstance(result, Tensor) else next(iter(result.values() if isinstance(result, dict) else result))
    if tuple(out.shape[2:]) != tuple(x.shape[2:]):
        raise UserError(
            f"the model's output grid {tuple(out.shape[2:])} differs from its input grid {tuple(x.shape[2:])}; "
            "medcam explains segmentation networks whose output matches the input size"
        )
    return out.float()


@dataclass(frozen=True)
class WeightedLogits(BoundTarget):
    """The linear window target: ``score = sum over channels and pixels of weights * output``."""

    weights: Tensor | None = None

    def score(self, output: Tensor) -> Tensor:
        if self.weights is None:  # pragma: no cover - always constructed with weights
            return super().score(output)
        return (output * self.weights.to(device=output.device, dtype=output.dtype)).flatten(1).sum(dim=1)


def window_combine(method: CAMMethod) -> Combine | None:
    """The per-window ``(A, G) -> raw map`` of a window-decomposable method, else ``None``."""
    flag = getattr(method, "window_decomposable", None)
    if flag is False or not isinstance(method, GradientMethod):
        return None
    if flag or type(method).run is GradientMethod.run:
        return method.combine
    return None


@dataclass(frozen=True)
class WindowCAMResult:
    """Maps ``(N, *spatial)`` per layer alias on ``x``'s grid, the bound target and the stitched output."""

    maps: dict[str, Tensor]
    target: BoundTarget
    output: Tensor
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # windows: counts, size, overlap, blending
    method_stats: dict[str, Any] = field(default_factory=dict)  # what the method reports (whole-volume run)


def window_stats(layout: WindowLayout, window: SlidingWindow, *, windows: int, with_backward: int) -> dict[str, Any]:
    """The ``stats`` of a decomposed (window by window) CAM: how many windows needed a backward pass."""
    return {
        "windows": windows,
        "windows_with_backward": with_backward,
        "roi_size": list(layout.roi),
        "overlap": window.overlap,
        "blend": window.mode,
        "decomposed": True,
    }


def sliding_window_cam(
    model: nn.Module,
    x: Tensor,
    method: CAMMethod,
    target: Target | BoundTarget,
    layers: Mapping[str, str],
    window: SlidingWindow,
    *,
    post: PostProcessing | None = None,
    output: OutputSelector = None,
    prediction: Tensor | None = None,
    progress: bool = False,
) -> WindowCAMResult:
    """Explain ``target`` on the stitched prediction of ``x`` ``(N, C, *spatial)`` window by window.

    ``prediction`` (the stitched output from :func:`predict`) is reused when given.
    Memory is bounded by one window batch plus one map per layer on the model grid.
    """
    post = post or PostProcessing()
    if prediction is None:
        prediction = predict(model, x, window, output=output, progress=False)
    bound = target if isinstance(target, BoundTarget) else target.bind(prediction)
    if not bound.is_segmentation:
        raise UserError("sliding-window CAM explains segmentation targets; for a classifier use medcam.explain")
    layout = window.layout(tuple(x.shape[2:]))
    combine = window_combine(method)
    with evaluation_mode(model):
        probe = Probe(model, output)
        if isinstance(method, RobustCAM):  # its views run per window (medcam.robust_windows)
            from medcam.robust_windows import robust_sliding_window_cam

            return robust_sliding_window_cam(
                probe, x, method, bound, layers, layout, window, post, prediction, progress
            )
        if combine is None:
            return _whole_volume(probe, x, method, bound, layers, layout, post, prediction)
        return _windows(probe, x, combine, bound, layers, layout, window, post, prediction, progress)


def _whole_volume(
    probe: Probe,
    x: Tensor,
    method: CAMMethod,
    bound: BoundTarget,
    layers: Mapping[str, str],
    layout: WindowLayout,
    post: PostProcessing,
    prediction: Tensor,
) -> WindowCAMResult:
    """Run a method that needs the whole input at once, if the volume fits in one window."""
    if len(layout.slices) > 1:
        raise WindowError(
            f"method {method.name!r} scores whole inputs, so it cannot be computed window by window, and the "
            f"volume {layout.spatial} is larger than the model's window {layout.roi}; use a gradient method "
            "(gradcam, hirescam, gradcam++, xgradcam) or a smaller volume"
        )
    padded_x = layout.pad_input(x)
    assert bound.mask is not None
    padded_target = replace(bound, mask=layout.pad_like(bound.mask))
    raw = method.run(probe, padded_x, padded_target, layers, PostProcessing(post.relu, None))
    crop = (slice(None), *layout.crop)
    maps = {
        alias: finalize(m[crop], layout.spatial, relu=False, normalization=post.normalization)
        for alias, m in raw.maps.items()
    }
    extras = {name: {alias: t[crop] for alias, t in per.items()} for name, per in raw.extras.items()}
    stats = {"windows": 1, "windows_with_backward": 1, "roi_size": list(layout.roi), "decomposed": False}
    return WindowCAMResult(maps, bound, prediction, extras, stats, dict(raw.stats))


def _windows(
    probe: Probe,
    x: Tensor,
    combine: Combine,
    bound: BoundTarget,
    layers: Mapping[str, str],
    layout: WindowLayout,
    window: SlidingWindow,
    post: PostProcessing,
    prediction: Tensor,
    progress: bool,
) -> WindowCAMResult:
    from tqdm.auto import tqdm

    assert bound.mask is not None
    n = x.shape[0]
    padded_x = layout.pad_input(x, window.padding_mode, window.cval)
    stitched = layout.pad_like(prediction.detach())
    mask = layout.pad_like(bound.mask.to(prediction.device).bool())  # bool: 1 byte per voxel
    weight = layout.importance.to(prediction.device)
    norm = layout.norm().to(prediction.device)
    accumulators = {alias: torch.zeros((n, *layout.padded), dtype=torch.float32) for alias in layers}
    jobs = [(b, w) for b in range(n) for w in layout.slices if bool(mask[_at(b, w)].any())]
    batches = [jobs[i : i + window.batch_size] for i in range(0, len(jobs), window.batch_size)]
    bar = tqdm(total=len(jobs), desc="CAM windows", unit="window", disable=not progress, leave=False)
    try:
        for batch in batches:
            patches = torch.cat([padded_x[(slice(b, b + 1), slice(None), *w)] for b, w in batch])
            weights = torch.cat([_window_weights(bound, stitched, mask, weight, norm, b, w) for b, w in batch])
            classes = torch.stack([bound.classes[b] for b, _ in batch])
            target = WeightedLogits(
                classes=classes,
                activation=bound.activation,
                mask=weights.abs().sum(dim=1) > 0,
                description=bound.description,
                region=bound.region,
                weights=weights,
            )
            capture = probe.capture(patches, layers, target, gradients=True)
            assert capture.gradients is not None
            for alias, acts in capture.activations.items():
                raw = upsample(combine(acts, capture.gradients[alias]).float(), layout.roi).cpu()
                for row, (b, w) in enumerate(batch):
                    accumulators[alias][_at(b, w)] += raw[row]
            bar.update(len(batch))
    finally:
        bar.close()
    crop = (slice(None), *layout.crop)
    maps = {}
    for alias in list(accumulators):
        acc = accumulators.pop(alias)  # release each accumulator as soon as its map is done
        maps[alias] = finalize(acc[crop], layout.spatial, relu=post.relu, normalization=post.normalization).to(x.device)
        del acc
    stats = window_stats(layout, window, windows=len(layout.slices) * n, with_backward=len(jobs))
    logger.info("sliding-window CAM: %d of %d windows intersect M", len(jobs), stats["windows"])
    return WindowCAMResult(maps, bound, prediction, {}, stats)


def _at(sample: int, window: tuple[slice, ...]) -> tuple[Any, ...]:
    """Index of one sample's window in a ``(N, *spatial)`` tensor."""
    return (sample, *window)


def _window_weights(
    bound: BoundTarget,
    stitched: Tensor,
    mask: Tensor,
    importance: Tensor,
    norm: Tensor,
    sample: int,
    window: tuple[slice, ...],
) -> Tensor:
    """imp_w(p) / norm(p) * M(p) * df/dY(p) on one window, ``(1, C, *roi)``.

    ``df/dY`` is taken by autograd through the target's own logit map at the stitched
    output, so any target kind (one class, a logsumexp region) gets its exact weights.
    """
    region = (slice(sample, sample + 1), *window)
    values = stitched[(slice(sample, sample + 1), slice(None), *window)].detach().clone().requires_grad_(True)
    single = replace(bound, classes=bound.classes[sample : sample + 1], mask=None)
    scale = (mask[region].to(values.dtype) * importance / norm[window]).to(values.dtype)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad((single.logit_map(values) * scale).sum(), values)
    return gradient.detach()
