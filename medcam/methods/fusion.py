"""Ensemble methods: a gradient map and a region map combined by their contribution to the score.

Fusion-CAM (Dekdegue et al. 2026) and its baseline Union-CAM (Hu et al. 2024).
Formulas and medcam's deviations: docs/methods-region-fusion.md, "Fusion-CAM".

The contribution of a map L is ``beta(L) = f_c(I_b + L * (X - I_b)) - f_c(I_b)``,
f_c the target's probability (softmax of class c; segmentation: mean class-c
probability over M) and I_b a baseline image. With the default all-zeros baseline
the masked input is ``L * X``, the paper's. Every f_c call shares the batched
forward passes of the region part, so an ensemble costs one backward pass and a few
forward passes more than its region method.

Why one module of this size: Union-CAM and Fusion-CAM share their options, the
contribution weights and the windowed protocol (``EnsembleMethod``); Fusion-CAM's three
variants (paper, normalised, segmentation) are one formula with its documented deviations.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from medcam.core.combine import (
    agreement_fusion,
    contribution_weights,
    denoise_below_percentile,
    denoise_gradients,
    paper_fusion,
    per_sample,
    similarity_fusion,
)
from medcam.core.ops import minmax, normalize, spatial_dims
from medcam.core.perturbation import BaselineSpec
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
    AUTO,
    DEFAULT_BATCH_SIZE,
    GroupCAM,
    MaskedInputs,
    Masking,
    RegionMethod,
    ScoreCAM,
    ScoreQueue,
    check_region_options,
)
from medcam.methods.region_windows import EnsembleWindowStitcher, Fusion, whole_input_only

GRADIENT_PARTS: dict[str, type[GradientMethod]] = {
    GradCAM.name: GradCAM,
    GradCAMPlusPlus.name: GradCAMPlusPlus,
    XGradCAM.name: XGradCAM,
    HiResCAM.name: HiResCAM,
}
REGION_PARTS: tuple[str, ...] = (ScoreCAM.name, GroupCAM.name)
FUSION_VARIANTS: tuple[str, ...] = (AUTO, "normalised", "paper", "segmentation")
# a contribution smaller than this fraction of the clean score is rounding noise, not evidence
DEFAULT_TOLERANCE = 0.01
# the segmentation variant's guard compares keep-top-k scores at k = these multiples of |M|
GUARD_MULTIPLES: tuple[float, ...] = (1.0, 4.0)

# maps inside an ensemble are ReLU'd and min-max normalised (docs/methods-region-fusion.md); the user's
# post-processing applies to the result only
INTERNAL = PostProcessing(relu=True, normalization="minmax")


class _Contributions:
    """Scores ``beta(L)`` of maps at input resolution against one baseline image, via a queue.

    The masked input is ``I_b + H (X - I_b)`` with H the map itself (``mask="soft"``) or
    its top ``top`` fraction (``"binary"``); with the zeros baseline and soft masks it is
    the paper's ``L * X``.
    """

    def __init__(self, queue: ScoreQueue, baseline: BaselineSpec, top: float | None) -> None:
        self.queue = queue
        self.samples = torch.arange(queue.x.shape[0])
        self.top = top
        self.base, self._base_ticket = queue.baseline(baseline), queue.baseline_ticket(baseline)  # None: zeros

    def add(self, maps: Tensor) -> int:
        return self.queue.add(MaskedInputs(maps, self.samples, self.base, normalize=False, top=self.top))

    def beta(self, ticket: int) -> Tensor:
        return self.queue[ticket].probability - self.queue[self._base_ticket].probability


class EnsembleMethod(CAMMethod):
    """Shared set-up of Union-CAM and Fusion-CAM: one captured pass, one queue, the region part."""

    region: str
    baseline: BaselineSpec
    masking: Masking
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
        baseline: BaselineSpec,
        batch_size: int,
        precision: str,
        max_channels: int | None,
        groups: int,
        memory_format: str,
        mask: str = AUTO,
        mask_top: float | str = AUTO,
    ) -> None:
        """Check and keep the options Union-CAM and Fusion-CAM share."""
        if not 0.0 <= theta < 100.0:
            raise UserError(f"theta is a percentage in [0, 100), got {theta}")
        self.region = region
        self.theta = theta
        self.baseline = baseline
        self.masking = Masking(mask, mask_top, baseline)
        self.batch_size = batch_size
        self.precision = precision
        self.max_channels = max_channels
        self.groups = groups
        self.memory_format = memory_format
        check_region_options(self.batch_size, self.precision, self.memory_format)
        if self.region not in REGION_PARTS:
            raise UserError(f"region={self.region!r} is not a region method; use one of {REGION_PARTS}")
        if self.max_channels is not None and self.region != ScoreCAM.name:
            raise UserError("max_channels applies to the Score-CAM region part; drop it or use region='scorecam'")

    def paper_masking(self) -> bool:
        """Whether ``auto`` masking resolves as for a classifier even on segmentation targets."""
        return False

    def resolved_masking(self, segmentation: bool) -> tuple[str, BaselineSpec]:
        return self.masking.resolve(segmentation and not self.paper_masking())

    def region_method(self, segmentation: bool = False) -> RegionMethod:
        """The region part, with the ensemble's mask; its baseline is its own default for the target.

        ``baseline`` applies to the contribution weights only (as before the masking options
        existed), so a classifier's region part stays the paper's Score-CAM on ``X * H_k``.
        """
        mask, _ = self.resolved_masking(segmentation)
        top = self.masking.resolved_top(segmentation and not self.paper_masking())
        _, baseline = Masking().resolve(segmentation and not self.paper_masking())
        if self.region == ScoreCAM.name:
            return ScoreCAM(
                batch_size=self.batch_size,
                precision=self.precision,
                max_channels=self.max_channels,
                memory_format=self.memory_format,
                mask=mask,
                mask_top=top,
                baseline=baseline,
            )
        return GroupCAM(
            groups=self.groups,
            batch_size=self.batch_size,
            precision=self.precision,
            memory_format=self.memory_format,
            mask=mask,
            mask_top=top,
        )

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        capture = probe.capture(x, layers, target, gradients=True)
        segmentation = capture.target.is_segmentation
        region = self.region_method(segmentation)
        queue = ScoreQueue(
            probe,
            x,
            capture.target,
            batch_size=self.batch_size,
            precision=self.precision,
            memory_format=self.memory_format,
        )
        mask, baseline = self.resolved_masking(segmentation)
        seen_as = segmentation and not self.paper_masking()  # the paper variant's auto masking is a classifier's
        contributions = _Contributions(
            queue, baseline, self.masking.resolved_top(seen_as) if mask == "binary" else None
        )
        stats: dict[str, Any] = {"contributions": self.masking.describe(seen_as)}
        maps, extras = self.ensemble(capture, queue, contributions, region, post, stats)
        stats.update(forward_passes=queue.forwards + 1, scored_inputs=queue.images, precision=queue.precision)
        return MethodResult(maps, capture.target, capture.output, extras=extras, stats=stats)

    def window_gradient(self) -> Combine:
        """The gradient part's per-window ``(A, G) -> raw map``, stitched like the gradient methods' maps."""
        raise NotImplementedError

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        """Over sliding windows: :class:`~medcam.methods.region_windows.EnsembleWindowStitcher`.

        It computes the union and Fusion-CAM's normalised and segmentation variants, with
        soft or binary masks; the paper variant runs on whole inputs only.
        """
        segmentation = context.target.is_segmentation
        mask, baseline = self.resolved_masking(segmentation)
        unsupported = self.window_unsupported(segmentation)
        if unsupported:
            whole_input_only(self.name, unsupported, "--method-option variant=normalised", context)
            return None
        return EnsembleWindowStitcher(
            context,
            self.region_method(segmentation).window_region(segmentation),
            name=self.name,
            gradient=self.window_gradient(),
            theta=self.theta,
            baseline=baseline,
            top=self.masking.resolved_top(segmentation and not self.paper_masking()) if mask == "binary" else None,
            fusion=self.window_fusion(segmentation),
        )

    def window_unsupported(self, segmentation: bool) -> str | None:
        """What of this method's configuration the windowed computation does not cover (``None``: all of it)."""
        return None

    def window_fusion(self, segmentation: bool) -> Fusion | None:
        """Fusion-CAM's variant over windows (``None``: not a fusion)."""
        return None

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

    ``variant="normalised"`` (classifiers' default, medcam's reading):

    1. L_d = the gradient map (``gradient``, min-max) with pixels below its
       ``theta``-th percentile set to 0.
    2. L_r = the region map (``region``: Score-CAM or Group-CAM), same captured pass.
    3. b_d, b_r = beta(L_d), beta(L_r), clamped at 0 and normalised to sum 1 (both
       <= 0: 0.5 each); L_gr = mm(b_d L_d + b_r L_r).
    4. b_gr = beta(L_gr); (b_gr, b_r) clamped and renormalised; L1 = b_gr L_gr, L2 = b_r L_r.
    5. S = clip(1 - |L1 - L2|, 0, 1); L = mm(S max(L1, L2) + (1 - S)(L1 + L2) / 2).

    ``variant="paper"``: Eqs. 1-6 exactly, raw betas, no normalisation between the
    steps, soft masks on the zeros image unless ``mask`` / ``baseline`` say otherwise
    (:func:`medcam.core.combine.paper_fusion`).

    ``variant="segmentation"`` (segmentation targets' default): steps 1-4 as
    ``normalised`` with the segmentation masking, then :func:`~medcam.core.combine.agreement_fusion`
    (``S max + (1 - S) min``: disagreement suppressed); the result falls back to the
    gradient map L_g when every beta is below ``tolerance`` x the clean score (no
    evidence to weigh) or when the fused map scores lower than L_g (``stats["fallback"]``).

    The agreement S of every layer is returned in ``extras["agreement"]``.
    """

    name = "fusioncam"

    def __init__(
        self,
        gradient: str = "gradcam",
        region: str = "scorecam",
        theta: float = 10.0,
        baseline: BaselineSpec = AUTO,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_channels: int | None = None,
        groups: int = 32,
        memory_format: str = "auto",
        variant: str = AUTO,
        mask: str = AUTO,
        mask_top: float | str = AUTO,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        if gradient not in GRADIENT_PARTS:
            raise UserError(f"gradient={gradient!r} is not a gradient method; use one of {tuple(GRADIENT_PARTS)}")
        if variant not in FUSION_VARIANTS:
            raise UserError(f"variant={variant!r} is not known; use one of {FUSION_VARIANTS}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise UserError(f"tolerance is a fraction of the clean score in [0, 1), got {tolerance!r}")
        self.gradient = gradient
        self.variant = variant
        self.tolerance = float(tolerance)
        self._setup(
            region=region,
            theta=theta,
            baseline=baseline,
            batch_size=batch_size,
            precision=precision,
            max_channels=max_channels,
            groups=groups,
            memory_format=memory_format,
            mask=mask,
            mask_top=mask_top,
        )

    def window_gradient(self) -> Combine:
        return GRADIENT_PARTS[self.gradient]().combine

    def paper_masking(self) -> bool:
        return self.variant == "paper"

    def resolved_variant(self, segmentation: bool) -> str:
        if self.variant != AUTO:
            return self.variant
        return "segmentation" if segmentation else "normalised"

    def window_unsupported(self, segmentation: bool) -> str | None:
        variant = self.resolved_variant(segmentation)
        return f"variant={variant!r}" if variant == "paper" else None

    def window_fusion(self, segmentation: bool) -> Fusion | None:
        return Fusion(self.resolved_variant(segmentation), self.tolerance, GUARD_MULTIPLES)

    def ensemble(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        region: RegionMethod,
        post: PostProcessing,
        stats: dict[str, Any],
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        variant = self.resolved_variant(capture.target.is_segmentation)
        stats["variant"] = variant
        gradient_maps = GRADIENT_PARTS[self.gradient]().maps(capture, queue.size, INTERNAL)
        denoised = {a: denoise_below_percentile(m, self.theta) for a, m in gradient_maps.items()}
        # the denoised maps and the baseline ride along with the region method's batches
        denoised_tickets = {a: contributions.add(m) for a, m in denoised.items()}
        finish_region = region.submit(capture, queue, INTERNAL, stats)
        queue.run()
        region_maps = finish_region()
        region_tickets = {a: contributions.add(m) for a, m in region_maps.items()}
        queue.run()
        if variant == "paper":
            return self._paper(
                capture, queue, contributions, denoised, region_maps, denoised_tickets, region_tickets, post, stats
            )

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
        fused_maps: dict[str, Tensor] = {}
        for alias in capture.activations:
            beta_gr = contributions.beta(combined_tickets[alias])
            b_gr, b_r = contributions_as_weights(beta_gr, weights_r[alias], like=combined[alias])
            first, second = b_gr * combined[alias], b_r * region_maps[alias]
            if variant == "segmentation":
                fused, agreement[alias] = agreement_fusion(first, second)
            else:
                fused, agreement[alias] = similarity_fusion(first, second)
            fused_maps[alias] = minmax(fused)
            betas[alias]["combined"] = _as_list(beta_gr)
        stats["betas"] = betas
        if variant == "segmentation":
            fused_maps = self._guard(capture, queue, contributions, gradient_maps, fused_maps, betas, stats)
        for alias, fused in fused_maps.items():
            maps[alias] = normalize(fused, post.normalization)
        return maps, {"agreement": agreement}

    def _guard(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        gradient_maps: dict[str, Tensor],
        fused_maps: dict[str, Tensor],
        betas: dict[str, dict[str, list[float]]],
        stats: dict[str, Any],
    ) -> dict[str, Tensor]:
        """The segmentation variant's fallback to the gradient map L_g, per sample, logged in ``stats``.

        The two maps are compared by their keep-top-k score (the segmentation faithfulness
        metric, docs/metrics.md): ``f_c`` with only the top ``k`` voxels of the map shown and
        the rest the baseline, averaged over ``k`` in :data:`GUARD_MULTIPLES` x |M|.
        """
        clean = capture.target.probability(capture.output.detach()).to(queue.probe.device)
        mask = capture.target.mask
        if mask is None:
            raise UserError("variant='segmentation' explains segmentation targets; use variant='normalised'")
        sizes = mask.flatten(1).sum(dim=1).tolist()
        pixels = float(torch.Size(queue.size).numel())

        def keep_tickets(maps: Tensor) -> list[list[int]]:
            return [
                [
                    queue.add(
                        MaskedInputs(
                            maps[n : n + 1],
                            torch.tensor([n]),
                            contributions.base,
                            normalize=False,
                            top=min(1.0, m * max(1.0, sizes[n]) / pixels),
                        )
                    )
                    for m in GUARD_MULTIPLES
                ]
                for n in range(maps.shape[0])
            ]

        def keep_score(tickets: list[list[int]]) -> Tensor:
            return torch.stack([torch.cat([queue[t].probability for t in row]).mean() for row in tickets]).to(
                clean.device
            )

        gradient_tickets = {a: keep_tickets(m) for a, m in gradient_maps.items()}
        fused_tickets = {a: keep_tickets(m) for a, m in fused_maps.items()}
        queue.run()
        out: dict[str, Tensor] = {}
        fallback: dict[str, list[str]] = {}
        for alias, fused in fused_maps.items():
            beta_g = keep_score(gradient_tickets[alias])
            beta_f = keep_score(fused_tickets[alias])
            parts = torch.tensor([betas[alias]["denoised_gradient"], betas[alias]["region"]], device=clean.device)
            negligible = (parts < self.tolerance * clean).all(dim=0)
            worse = beta_f.to(clean.device) < beta_g.to(clean.device)
            reasons = [
                "betas negligible against the clean score"
                if n
                else "fused map scores below the gradient map"
                if w
                else "fused"
                for n, w in zip(negligible.tolist(), worse.tolist(), strict=True)
            ]
            keep = per_sample((~(negligible | worse)).float(), fused) > 0
            out[alias] = torch.where(keep, fused, gradient_maps[alias])
            fallback[alias] = reasons
            betas[alias]["keep_gradient"] = _as_list(beta_g)
            betas[alias]["keep_fused"] = _as_list(beta_f)
            betas[alias]["clean"] = _as_list(clean)
        stats["fallback"] = fallback
        return out

    def _paper(
        self,
        capture: Capture,
        queue: ScoreQueue,
        contributions: _Contributions,
        denoised: dict[str, Tensor],
        region_maps: dict[str, Tensor],
        denoised_tickets: dict[str, int],
        region_tickets: dict[str, int],
        post: PostProcessing,
        stats: dict[str, Any],
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Eqs. 2-6 with raw betas; the user's normalisation applies to the result only."""
        betas: dict[str, dict[str, list[float]]] = {}
        raw: dict[str, tuple[Tensor, Tensor]] = {}
        combined: dict[str, Tensor] = {}
        for alias in capture.activations:
            beta_d = contributions.beta(denoised_tickets[alias])
            beta_r = contributions.beta(region_tickets[alias])
            raw[alias] = (beta_d, beta_r)
            combined[alias], _, _ = paper_fusion(denoised[alias], region_maps[alias], beta_d, beta_r)
            betas[alias] = {"denoised_gradient": _as_list(beta_d), "region": _as_list(beta_r)}
        combined_tickets = {a: contributions.add(m) for a, m in combined.items()}
        queue.run()
        maps, agreement = {}, {}
        for alias in capture.activations:
            beta_gr = contributions.beta(combined_tickets[alias])
            beta_d, beta_r = raw[alias]
            _, fused, agreement[alias] = paper_fusion(denoised[alias], region_maps[alias], beta_d, beta_r, beta_gr)
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
    the result is L_u where beta(L_u) > beta(L_r), else L_r. ``denoise="positive"``
    (default) takes the percentile over each channel's positive gradients, ``"paper"``
    over all of them (which removes nothing when the percentile is <= 0).
    """

    name = "unioncam"

    def __init__(
        self,
        region: str = "scorecam",
        theta: float = 10.0,
        baseline: BaselineSpec = AUTO,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_channels: int | None = None,
        groups: int = 32,
        memory_format: str = "auto",
        mask: str = AUTO,
        mask_top: float | str = AUTO,
        denoise: str = "positive",
    ) -> None:
        if denoise not in ("positive", "paper"):
            raise UserError(f"denoise={denoise!r} is not known; use 'positive' or 'paper'")
        self.denoise = denoise
        self._setup(
            region=region,
            theta=theta,
            baseline=baseline,
            batch_size=batch_size,
            precision=precision,
            max_channels=max_channels,
            groups=groups,
            memory_format=memory_format,
            mask=mask,
            mask_top=mask_top,
        )

    def window_gradient(self) -> Combine:
        return self.gradient_map

    def gradient_map(self, acts: Tensor, gradients: Tensor) -> Tensor:
        """Raw Union-CAM gradient map ``(N, *s)`` from denoised, per-channel normalised positive gradients."""
        positive = denoise_gradients(gradients.float(), self.theta, positive=self.denoise == "positive").clamp_min(0)
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
