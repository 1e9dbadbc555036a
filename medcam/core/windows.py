"""Sliding windows on the model grid: where windows lie, how they blend, and each window's share of a target.

A stitched prediction is the importance-weighted average of window outputs (MONAI's
``sliding_window_inference``; nnU-Net blends the same way),

    Y(p) = sum_w imp_w(p) y_w(p) / norm(p),      norm(p) = sum_w imp_w(p).

A segmentation target scores ``S = sum over p in M of f(Y(p))``. Its exact gradient
with respect to the activations of window ``w`` is the gradient of the linear window
score ``S_w = sum over p, c of imp_w(p) / norm(p) * M(p) * df/dY_c(p) * y_w,c(p)``, with
``df/dY`` taken at the stitched ``Y`` (:func:`window_weights`); :class:`WeightedLogits`
is that target; :func:`predict` is the stitched prediction itself (training and explain share
it). The loop over CAM windows lives in
:mod:`medcam.pipeline.windows`, and each method says how its per-window results stitch
(:class:`medcam.methods.base.WindowStitcher`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcam.core.fast_conv import onednn_convolutions
from medcam.core.hooks import OutputSelector, evaluation_mode, select_output
from medcam.core.targets import BoundTarget
from medcam.errors import UserError

Window = tuple[slice, ...]
Job = tuple[int, Window]  # (sample, window)


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
    slices: list[Window]
    importance: Tensor

    @property
    def crop(self) -> Window:
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
    with torch.no_grad(), evaluation_mode(model), onednn_convolutions(model):
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
    check_output_grid(tuple(out.shape[2:]), tuple(x.shape[2:]))
    return out.float()


def check_output_grid(output: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """A segmentation network's output must lie on its input's grid (spatial sizes)."""
    if output != expected:
        raise UserError(
            f"the model's output grid {output} differs from its input grid {expected}; "
            "medcam explains segmentation networks whose output matches the input size"
        )


class BlendedOutputs:
    """:func:`predict`'s result, stitched from window outputs handed over one batch at a time.

    As ``sliding_window_inference`` blends them: each window's output is multiplied by the
    importance map in the output's own dtype (MONAI multiplies in place, so a bfloat16
    output stays bfloat16), added on the padded grid in the input's dtype on the input's
    device, divided by the sum of importances and cropped. Windows may come in any order
    (the sum only changes in its last bits).
    """

    def __init__(self, layout: WindowLayout, samples: int, norm: Tensor, dtype: torch.dtype) -> None:
        self.layout = layout
        self.samples = samples
        self.norm = norm  # on the device the prediction is stitched on
        self.dtype = dtype
        self.importance = layout.importance.to(dtype=dtype)
        self.sum: Tensor | None = None

    @property
    def channels(self) -> int | None:
        return None if self.sum is None else int(self.sum.shape[1])

    def add(self, outputs: Tensor, jobs: list[Job]) -> None:
        """The outputs ``(B, C, *roi)`` of windows ``jobs`` (row ``r`` is window ``jobs[r]``)."""
        check_output_grid(tuple(outputs.shape[2:]), self.layout.roi)
        if self.sum is None:
            shape = (self.samples, outputs.shape[1], *self.layout.padded)
            self.sum = torch.zeros(shape, dtype=self.dtype, device=self.norm.device)
        blended = outputs.detach().clone()
        blended *= self.importance.to(blended.device)
        blended = blended.to(self.norm.device)
        for row, (sample, window) in enumerate(jobs):
            self.sum[(slice(sample, sample + 1), slice(None), *window)] += blended[row : row + 1]

    def shape_only(self) -> Tensor:
        """A float32 tensor of the padded prediction's shape holding no memory (zeros)."""
        assert self.sum is not None, "no window output yet"
        return torch.zeros((), device=self.norm.device).expand(self.sum.shape)

    def result(self) -> Tensor:
        """The stitched prediction ``(N, C, *spatial)``, float32 (the padded sum is divided in place)."""
        assert self.sum is not None, "no window output yet"
        total, self.sum = self.sum, None
        total /= self.norm
        return total[(slice(None), slice(None), *self.layout.crop)].float()


def at(sample: int, window: Window) -> tuple[Any, ...]:
    """Index of one sample's window in a ``(N, *spatial)`` tensor."""
    return (sample, *window)


@dataclass(frozen=True)
class WeightedLogits(BoundTarget):
    """The linear window target: ``score = sum over channels and pixels of weights * output``."""

    weights: Tensor | None = None

    @property
    def linear(self) -> bool:
        return type(self).score is WeightedLogits.score  # fixed weights times the output

    def score(self, output: Tensor) -> Tensor:
        if self.weights is None:  # pragma: no cover - always constructed with weights
            return super().score(output)
        return (output * self.weights.to(device=output.device, dtype=output.dtype)).flatten(1).sum(dim=1)


def window_weights(
    bound: BoundTarget,
    stitched: Tensor,
    mask: Tensor,
    importance: Tensor,
    norm: Tensor,
    sample: int,
    window: Window,
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


def window_target(bound: BoundTarget, weights: Tensor, classes: Tensor) -> WeightedLogits:
    """The target of a batch of windows: ``weights`` ``(B, C, *roi)``, one class row per window."""
    return WeightedLogits(
        classes=classes,
        activation=bound.activation,
        mask=weights.abs().sum(dim=1) > 0,
        description=bound.description,
        region=bound.region,
        weights=weights,
    )
