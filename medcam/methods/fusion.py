"""Ensemble methods: a gradient map and a region map combined by their contribution to the score.

Fusion-CAM (Dekdegue et al. 2026) and its baseline Union-CAM (Hu et al. 2024).
Formulas and medcam's deviations: docs/methods-region-fusion.md, "Fusion-CAM".

The contribution of a map L is ``beta(L) = f_c(I_b + L * (X - I_b)) - f_c(I_b)``,
f_c the target's probability (softmax of class c; segmentation: mean class-c
probability over M) and I_b a baseline image. With the default all-zeros baseline
the masked input is ``L * X``, the paper's. Every f_c call shares the batched
forward passes of the region part, so an ensemble costs one backward pass and a few
forward passes more than its region method.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from medcam.core.combine import (
    contribution_weights,
    denoise_below_percentile,
    denoise_gradients,
    per_sample,
    similarity_fusion,
)
from medcam.core.ops import minmax, normalize, spatial_dims
from medcam.core.perturbation import BASELINES, baseline_image
from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, Target
from medcam.errors import UserError
from medcam.methods.base import (
    CAMMethod,
    Combine,
    GradientMethod,
    MethodResult,
    PostProcessing,
    WindowContext,
    WindowStitcher,
)
from medcam.methods.gradient import GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM
from medcam.methods.region import (
    DEFAULT_BATCH_SIZE,
    GroupCAM,
    MaskedInputs,
    RegionMethod,
    ScoreCAM,
    ScoreQueue,
    check_region_options,
)
from medcam.methods.region_windows import EnsembleWindowStitcher

GRADIENT_PARTS: dict[str, type[GradientMethod]] = {
    GradCAM.name: GradCAM,
    GradCAMPlusPlus.name: GradCAMPlusPlus,
    XGradCAM.name: XGradCAM,
    HiResCAM.name: HiResCAM,
}
REGION_PARTS: tuple[str, ...] = (ScoreCAM.name, GroupCAM.name)

# maps inside an ensemble are ReLU'd and min-max normalised (docs/methods-region-fusion.md); the user's
# post-processing applies to the result only
INTERNAL = PostProcessing(relu=True, normalization="minmax")


class _Contributions:
    """Scores ``beta(L)`` of maps at input resolution against one baseline image, via a queue."""

    def __init__(self, queue: ScoreQueue, baseline: str) -> None:
        self.queue = queue
        self.samples = torch.arange(queue.x.shape[0])
        # None = all-zeros: the masked input is then exactly L * X
        self.base = None if baseline == "zeros" else baseline_image(queue.x, baseline)
        flat = torch.zeros(queue.x.shape[0], *([1] * len(queue.size)))
        base = torch.zeros_like(queue.x) if self.base is None else self.base
        self._base_ticket = queue.add(MaskedInputs(flat, self.samples, base, normalize=False))

    def add(self, maps: Tensor) -> int:
        return self.queue.add(MaskedInputs(maps, self.samples, self.base, normalize=False))

    def beta(self, ticket: int) -> Tensor:
        return self.queue[ticket].probability - self.queue[self._base_ticket].probability


class EnsembleMethod(CAMMethod):
    """Shared set-up of Union-CAM and Fusion-CAM: one captured pass, one queue, the region part."""

    region: str
    baseline: str
    batch_size: int
    precision: str
    max_channels: int | None
    groups: int
    memory_format: str

    theta: float

    def _setup(
        self,
        *,
        region: str,
        theta: float,
        baseline: str,
        batch_size: int,
        precision: str,
        max_channels: int | None,
        groups: int,
        memory_format: str,
    ) -> None:
        """Check and keep the options Union-CAM and Fusion-CAM share."""
        if not 0.0 <= theta < 100.0:
            raise UserError(f"theta is a percentage in [0, 100), got {theta}")
        self.region = region
        self.theta = theta
        self.baseline = baseline
        self.batch_size = batch_size
        self.precision = precision
        self.max_channels = max_channels
        self.groups = groups
        self.memory_format = memory_format
        check_region_options(self.batch_size, self.precision, self.memory_format)
        if self.region not in REGION_PARTS:
            raise UserError(f"region={self.region!r} is not a region method; use one of {REGION_PARTS}")
        if self.baseline not in BASELINES:
            raise UserError(f"baseline={self.baseline!r} is not known; use one of {BASELINES}")
        if self.max_channels is not None and self.region != ScoreCAM.name:
            raise UserError("max_channels applies to the Score-CAM region part; drop it or use region='scorecam'")

    def region_method(self) -> RegionMethod:
        if self.region == ScoreCAM.name:
            return ScoreCAM(
                batch_size=self.batch_size,
                precision=self.precision,
                max_channels=self.max_channels,
                memory_format=self.memory_format,
            )
        return GroupCAM(
            groups=self.groups,
            batch_size=self.batch_size,
            precision=self.precision,
            memory_format=self.memory_format,
        )

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        region = self.region_method()
        capture = probe.capture(x, layers, target, gradients=True)
        queue = ScoreQueue(
            probe,
            x,
            capture.target,
            batch_size=self.batch_size,
            precision=self.precision,
            memory_format=self.memory_format,
        )
        contributions = _Contributions(queue, self.baseline)
        stats: dict[str, Any] = {}
        maps, extras = self.ensemble(capture, queue, contributions, region, post, stats)
        stats.update(forward_passes=queue.forwards + 1, scored_inputs=queue.images, precision=queue.precision)
        return MethodResult(maps, capture.target, capture.output, extras=extras, stats=stats)

    def window_gradient(self) -> Combine:
        """The gradient part's per-window ``(A, G) -> raw map``, stitched like the gradient methods' maps."""
        raise NotImplementedError

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        """Over sliding windows: :class:`~medcam.methods.region_windows.EnsembleWindowStitcher`."""
        return EnsembleWindowStitcher(
            context,
            self.region_method().window_region(),
            name=self.name,
            gradient=self.window_gradient(),
            theta=self.theta,
            baseline=self.baseline,
        )

    @abstractmethod
    def ensemble(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        region: RegionMethod,
        post: PostProcessing,
        stats: dict[str, Any],
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Maps and extras, diagnostics into ``stats``; implemented by each ensemble."""


def _as_list(values: Tensor) -> list[float]:
    return [float(v) for v in values.detach().cpu()]


class FusionCAM(EnsembleMethod):
    """Fusion-CAM (Dekdegue et al. 2026): denoise, weighted union, similarity fusion.

    1. L_d = the gradient map (``gradient``, min-max) with pixels below its
       ``theta``-th percentile set to 0.
    2. L_r = the region map (``region``: Score-CAM or Group-CAM), same captured pass.
    3. b_d, b_r = beta(L_d), beta(L_r), clamped at 0 and normalised to sum 1 (both
       <= 0: 0.5 each); L_gr = mm(b_d L_d + b_r L_r).
    4. b_gr = beta(L_gr); (b_gr, b_r) clamped and renormalised; L1 = b_gr L_gr, L2 = b_r L_r.
    5. S = clip(1 - |L1 - L2|, 0, 1); L = mm(S max(L1, L2) + (1 - S)(L1 + L2) / 2).

    The agreement S of every layer is returned in ``extras["agreement"]``.
    """

    name = "fusioncam"

    def __init__(
        self,
        gradient: str = "gradcam",
        region: str = "scorecam",
        theta: float = 10.0,
        baseline: str = "zeros",
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_channels: int | None = None,
        groups: int = 32,
        memory_format: str = "auto",
    ) -> None:
        if gradient not in GRADIENT_PARTS:
            raise UserError(f"gradient={gradient!r} is not a gradient method; use one of {tuple(GRADIENT_PARTS)}")
        self.gradient = gradient
        self._setup(
            region=region,
            theta=theta,
            baseline=baseline,
            batch_size=batch_size,
            precision=precision,
            max_channels=max_channels,
            groups=groups,
            memory_format=memory_format,
        )

    def window_gradient(self) -> Combine:
        return GRADIENT_PARTS[self.gradient]().combine

    def ensemble(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        region: RegionMethod,
        post: PostProcessing,
        stats: dict[str, Any],
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        gradient_maps = GRADIENT_PARTS[self.gradient]().maps(capture, queue.size, INTERNAL)
        denoised = {a: denoise_below_percentile(m, self.theta) for a, m in gradient_maps.items()}
        # the denoised maps and the baseline ride along with the region method's batches
        denoised_tickets = {a: contributions.add(m) for a, m in denoised.items()}
        finish_region = region.submit(capture, queue, INTERNAL, stats)
        queue.run()
        region_maps = finish_region()
        region_tickets = {a: contributions.add(m) for a, m in region_maps.items()}
        queue.run()

        combined, weights_r = {}, {}
        betas: dict[str, dict[str, list[float]]] = {}
        for alias in capture.activations:
            beta_d = contributions.beta(denoised_tickets[alias])
            beta_r = contributions.beta(region_tickets[alias])
            b_d, b_r = contributions_as_weights(beta_d, beta_r, like=denoised[alias])
            combined[alias] = minmax(b_d * denoised[alias] + b_r * region_maps[alias])
            weights_r[alias] = beta_r
            betas[alias] = {"denoised_gradient": _as_list(beta_d), "region": _as_list(beta_r)}
        combined_tickets = {a: contributions.add(m) for a, m in combined.items()}
        queue.run()

        maps, agreement = {}, {}
        for alias in capture.activations:
            beta_gr = contributions.beta(combined_tickets[alias])
            b_gr, b_r = contributions_as_weights(beta_gr, weights_r[alias], like=combined[alias])
            fused, agreement[alias] = similarity_fusion(b_gr * combined[alias], b_r * region_maps[alias])
            maps[alias] = normalize(fused, post.normalization)
            betas[alias]["combined"] = _as_list(beta_gr)
        stats["betas"] = betas
        return maps, {"agreement": agreement}


def contributions_as_weights(first: Tensor, second: Tensor, *, like: Tensor) -> tuple[Tensor, Tensor]:
    """Clamped, normalised contribution weights of two maps, shaped to scale maps like ``like``."""
    a, b = contribution_weights(first, second)
    return per_sample(a, like), per_sample(b, like)


class UnionCAM(EnsembleMethod):
    """Union-CAM (Hu et al. 2024), the ensemble baseline of the Fusion-CAM paper.

    Gradient part: per channel, gradients below their ``theta``-th percentile become 0;
    W_k = ReLU(G_k) / sum_p ReLU(G_k); L_d = mm(ReLU(sum_k W_k * A_k)). Region part:
    L_r (Score-CAM by default). Combined L_u = mm(b_d L_d + b_r L_r) with the
    contribution weights (clamped and normalised as in Fusion-CAM, medcam's choice);
    the result is L_u where beta(L_u) > beta(L_r), else L_r.
    """

    name = "unioncam"

    def __init__(
        self,
        region: str = "scorecam",
        theta: float = 10.0,
        baseline: str = "zeros",
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_channels: int | None = None,
        groups: int = 32,
        memory_format: str = "auto",
    ) -> None:
        self._setup(
            region=region,
            theta=theta,
            baseline=baseline,
            batch_size=batch_size,
            precision=precision,
            max_channels=max_channels,
            groups=groups,
            memory_format=memory_format,
        )

    def window_gradient(self) -> Combine:
        return self.gradient_map

    def gradient_map(self, acts: Tensor, gradients: Tensor) -> Tensor:
        """Raw Union-CAM gradient map ``(N, *s)`` from denoised, per-channel normalised positive gradients."""
        positive = denoise_gradients(gradients.float(), self.theta).clamp_min(0)
        total = positive.sum(dim=spatial_dims(positive, channels=True), keepdim=True)
        weights = torch.where(total > 0, positive / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
        return (weights * acts.float()).sum(dim=1)

    def ensemble(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        region: RegionMethod,
        post: PostProcessing,
        stats: dict[str, Any],
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        if capture.gradients is None:
            raise RuntimeError("Union-CAM needs a captured pass with gradients")
        gradient_maps = {
            a: INTERNAL.apply(self.gradient_map(acts, capture.gradients[a]), queue.size)
            for a, acts in capture.activations.items()
        }
        gradient_tickets = {a: contributions.add(m) for a, m in gradient_maps.items()}
        finish_region = region.submit(capture, queue, INTERNAL, stats)
        queue.run()
        region_maps = finish_region()
        region_tickets = {a: contributions.add(m) for a, m in region_maps.items()}
        queue.run()

        combined, region_betas = {}, {}
        for alias in capture.activations:
            beta_d = contributions.beta(gradient_tickets[alias])
            region_betas[alias] = contributions.beta(region_tickets[alias])
            b_d, b_r = contributions_as_weights(beta_d, region_betas[alias], like=gradient_maps[alias])
            combined[alias] = minmax(b_d * gradient_maps[alias] + b_r * region_maps[alias])
        combined_tickets = {a: contributions.add(m) for a, m in combined.items()}
        queue.run()

        maps: dict[str, Tensor] = {}
        chosen: dict[str, list[str]] = {}
        for alias in capture.activations:
            better = contributions.beta(combined_tickets[alias]) > region_betas[alias]
            pick = per_sample(better.float(), combined[alias]) > 0
            maps[alias] = normalize(torch.where(pick, combined[alias], region_maps[alias]), post.normalization)
            chosen[alias] = ["combined" if b else "region" for b in better.tolist()]
        stats["chosen"] = chosen
        return maps, {}
