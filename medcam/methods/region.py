"""Region methods: maps weighted by the model's score on masked copies of the input.

Score-CAM (Wang et al. 2020) and Group-CAM (Zhang et al. 2021). They explain any
target: the score of a masked input is ``BoundTarget.probability`` (the softmax
probability of class c, or for segmentation the mean class-c probability over the
pixel set M fixed on the clean input). Formulas: docs/methods-region-fusion.md.

Every masked input goes through one :class:`ScoreQueue`, which runs the model in
batches. Speed comes only from work that cannot change the map: constant channels
are skipped, channels whose normalised masks are identical are scored once, and the
forward passes use a faster memory layout and, on request, reduced precision.

Why one module of this size: Score-CAM and Group-CAM share the masked-input batching
(:class:`ScoreQueue`) that Fusion-CAM reuses; the pure maths is in :mod:`medcam.core.perturbation`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from medcam.core.ops import spatial_dims, upsample
from medcam.core.perturbation import (
    BASELINES,
    BLUR_KERNEL,
    BLUR_SIGMA,
    BaselineSpec,
    baseline_image,
    batch_ranges,
    binarise_top,
    blend,
    blur_baseline,
    check_masking,
    mask_to_input,
)
from medcam.core.precision import PRECISIONS, autocast_dtype
from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, Target
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, MethodResult, PostProcessing, WindowContext, WindowStitcher
from medcam.methods.region_windows import RegionWindowStitcher, WindowRegion

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "channels_last", "contiguous")
ScoreCAMWeights = Literal["probability", "increase", "softmax_over_channels"]
SCORECAM_WEIGHTS: tuple[str, ...] = ("probability", "increase", "softmax_over_channels")

DEFAULT_BATCH_SIZE = 16

AUTO = "auto"
# How a segmentation target is scored on a masked input when mask / mask_top / baseline are
# "auto": chosen by measurement (energy inside the true tumour and keep-top-k on held-out
# KiTS-like phantoms with the demo U-Net, benchmarks/bench_seg_region.py,
# docs/methods-region-fusion.md): binary masks of each map's top 1 % over air. Classifiers
# keep the papers' soft masks on the all-zeros image (and 5 % when asked for binary masks).
SEGMENTATION_MASK = "binary"
SEGMENTATION_MASK_TOP = 0.01
SEGMENTATION_BASELINE: BaselineSpec = "min"
# with a non-zero baseline every masked input scores at least about f_c(x_b); weighting channels
# by that raw probability adds f_c(x_b) x (the plain channel sum), a diffuse map: segmentation
# weighs by the increase over the baseline instead
SEGMENTATION_WEIGHTS = "increase"
DEFAULT_MASK_TOP = 0.05  # a classifier's kept fraction with mask="binary" (never measured otherwise)


@dataclass(frozen=True)
class Masking:
    """How a region score shows the model the input through a map ``H``: ``x_b + H (x - x_b)``.

    ``mask``: ``"soft"`` (H = the min-max normalised upsampled map, the papers'),
    ``"binary"`` (H = 1 on the ``top`` fraction of each upsampled map, else 0) or
    ``"auto"`` (binary for segmentation targets, soft for classifiers). ``top``: a
    fraction in (0, 1] or ``"auto"`` (:data:`SEGMENTATION_MASK_TOP` for segmentation,
    :data:`DEFAULT_MASK_TOP` for classifiers). ``baseline``:
    ``x_b`` in the one baseline grammar (:func:`medcam.core.perturbation.baseline_image`),
    or ``"auto"`` (``classifier``'s for classifiers, :data:`SEGMENTATION_BASELINE` for
    segmentation). On CT and MR a soft mask times the image turns tissue into other
    tissue (0.75 x tumour = cyst); a binary mask over an air (``"min"``) baseline shows
    each voxel either as it is or as air.
    """

    mask: str = AUTO
    top: float | str = AUTO
    baseline: BaselineSpec = AUTO
    classifier: BaselineSpec = "zeros"

    def __post_init__(self) -> None:
        top = SEGMENTATION_MASK_TOP if isinstance(self.top, str) and self.top == AUTO else self.top
        check_masking(SEGMENTATION_MASK if self.mask == AUTO else self.mask, top)  # type: ignore[arg-type]
        for spec in (self.baseline, self.classifier):
            if isinstance(spec, str) and spec != AUTO and spec not in BASELINES:
                raise UserError(f"baseline={spec!r} is not known; use one of {(AUTO, *BASELINES)} or a number")

    def resolve(self, segmentation: bool) -> tuple[str, BaselineSpec]:
        """The mask mode and baseline that apply to a target."""
        mask = self.mask if self.mask != AUTO else (SEGMENTATION_MASK if segmentation else "soft")
        baseline = self.baseline
        if isinstance(baseline, str) and baseline == AUTO:
            baseline = SEGMENTATION_BASELINE if segmentation else self.classifier
        return mask, baseline

    def resolved_top(self, segmentation: bool) -> float:
        """The kept fraction of a binary mask for a target."""
        if isinstance(self.top, str):
            return SEGMENTATION_MASK_TOP if segmentation else DEFAULT_MASK_TOP
        return float(self.top)

    def describe(self, segmentation: bool) -> dict[str, Any]:
        """What ran, for ``stats``."""
        mask, baseline = self.resolve(segmentation)
        out: dict[str, Any] = {"mask": mask, "baseline": baseline if not isinstance(baseline, Tensor) else "tensor"}
        if mask == "binary":
            out["mask_top"] = self.resolved_top(segmentation)
        return out


def check_region_options(batch_size: int, precision: str, memory_format: str) -> None:
    """Validate the options every region method shares; raise a :class:`UserError` naming the fix."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r} is not known; use one of {PRECISIONS}")
    if memory_format not in MEMORY_FORMATS:
        raise UserError(f"memory_format={memory_format!r} is not known; use one of {MEMORY_FORMATS}")


@dataclass(frozen=True)
class MaskedInputs:
    """A set of masked inputs ``base + m * (x - base)`` to score, one per mask.

    ``masks`` ``(Q, *s)`` at any resolution (brought to the input grid batch by batch,
    so the full set never sits in memory at input resolution); ``samples`` ``(Q,)``
    the sample of ``x`` each mask applies to; ``base`` ``(N, C, *S)`` or ``None`` for
    the all-zeros baseline; ``normalize`` min-max scales each upsampled mask;
    ``logits`` asks for the target's logit score as well as its probability; ``top``
    binarises each mask at input resolution to its ``top`` fraction of highest pixels.
    """

    masks: Tensor
    samples: Tensor
    base: Tensor | None = None
    normalize: bool = True
    align_corners: bool = False
    logits: bool = False
    top: float | None = None

    def __len__(self) -> int:
        return int(self.samples.numel())


@dataclass(frozen=True)
class Scores:
    """Scores of masked inputs: ``probability`` (the target's) and ``logit`` (its score, if asked)."""

    probability: Tensor
    logit: Tensor | None


class ScoreQueue:
    """Collects masked inputs of one explained batch and scores them in batched forward passes.

    Inputs from different methods, layers and samples share batches, so a method that
    adds a few inputs (Fusion-CAM's contribution weights) to a long Score-CAM queue
    costs almost nothing extra.
    """

    def __init__(
        self,
        probe: Probe,
        x: Tensor,
        target: BoundTarget,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        memory_format: str = "auto",
    ) -> None:
        check_region_options(batch_size, precision, memory_format)
        self.probe = probe
        self.x = x.detach().to(probe.device)
        self.target, self._crop = _cropped_to_pixel_set(target)
        self.batch_size = batch_size
        self.dtype = autocast_dtype(probe.device, precision)
        self.layout = self._layout(memory_format, self.x.ndim)
        self._fallback = memory_format == "auto"
        self._pending: list[tuple[int, MaskedInputs]] = []
        self._done: dict[int, Scores] = {}
        self._tickets = 0
        self._baselines: dict[str, tuple[Tensor | None, int | None]] = {}
        self.forwards = 0
        self.images = 0

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @staticmethod
    def _layout(memory_format: str, ndim: int) -> torch.memory_format:
        # channels-last inputs let oneDNN run convolutions without reordering (measured on
        # ResNet-18: ~1.3x in fp32, ~2x in bf16); MONAI's 3D U-Net showed no steady gain, so
        # auto keeps 3D inputs as they are
        if memory_format == "channels_last" or (memory_format == "auto" and ndim == 4):
            return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim, torch.contiguous_format)
        return torch.contiguous_format

    def baseline(self, spec: BaselineSpec) -> Tensor | None:
        """The baseline image for ``spec`` (``None`` = all zeros), computed once per spec."""
        key = self._key(spec)
        if key not in self._baselines:
            zeros = isinstance(spec, str) and spec == "zeros"
            self._baselines[key] = (None if zeros else baseline_image(self.x, spec), None)
        return self._baselines[key][0]

    def baseline_ticket(self, spec: BaselineSpec) -> int:
        """The ticket of the baseline image's own score, queued once per spec (methods share it)."""
        base = self.baseline(spec)
        key = self._key(spec)
        ticket = self._baselines[key][1]
        if ticket is None:
            count = self.x.shape[0]
            flat = torch.zeros(count, *([1] * len(self.size)))
            image = torch.zeros_like(self.x) if base is None else base
            ticket = self.add(MaskedInputs(flat, torch.arange(count), image, normalize=False))
            self._baselines[key] = (base, ticket)
        return ticket

    @staticmethod
    def _key(spec: BaselineSpec) -> str:
        return spec if isinstance(spec, str) else f"{type(spec).__name__}:{id(spec)}"

    def add(self, inputs: MaskedInputs) -> int:
        """Queue masked inputs; the returned ticket reads their scores after :meth:`run`."""
        ticket = self._tickets
        self._tickets += 1
        if len(inputs):
            self._pending.append((ticket, inputs))
        else:
            empty = torch.empty(0, device=self.probe.device)
            self._done[ticket] = Scores(empty, empty if inputs.logits else None)
        return ticket

    def __getitem__(self, ticket: int) -> Scores:
        if ticket not in self._done:
            raise RuntimeError(f"scores of ticket {ticket} are read before ScoreQueue.run()")
        return self._done[ticket]

    def run(self) -> None:
        """Score every queued input, ``batch_size`` inputs per forward pass."""
        jobs, self._pending = self._pending, []
        total = sum(len(job) for _, job in jobs)
        if not total:
            return
        probability = torch.empty(total, device=self.probe.device)
        logit = torch.full((total,), float("nan"), device=self.probe.device)
        offsets = [0]
        for _, job in jobs:
            offsets.append(offsets[-1] + len(job))
        for batch in batch_ranges(total, self.batch_size):
            parts, samples, logits = [], [], False
            for (_, job), start in zip(jobs, offsets, strict=False):
                lo, hi = max(batch.start, start), min(batch.stop, start + len(job))
                if lo >= hi:
                    continue
                rows = slice(lo - start, hi - start)
                index = job.samples[rows].to(self.x.device)
                masks = mask_to_input(
                    job.masks[rows].to(self.x.device),
                    self.size,
                    normalize=job.normalize,
                    align_corners=job.align_corners,
                )
                if job.top is not None:
                    masks = binarise_top(masks, job.top)
                base = None if job.base is None else job.base[index]
                parts.append(blend(self.x[index], masks, base))
                samples.append(index)
                logits = logits or job.logits
            output = self._forward(torch.cat(parts))[self._crop]
            target = self.target.select(torch.cat(samples).to(self.target.classes.device))
            probability[batch] = target.probability(output).to(probability.device)
            if logits:
                logit[batch] = target.score(output).to(logit.device)
        for (ticket, job), start, stop in zip(jobs, offsets, offsets[1:], strict=False):
            self._done[ticket] = Scores(probability[start:stop], logit[start:stop] if job.logits else None)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.probe.device.type, dtype=self.dtype)

    def _forward(self, inputs: Tensor) -> Tensor:
        self.forwards += 1
        self.images += inputs.shape[0]
        with torch.inference_mode(), self._autocast():
            if self.layout is not torch.contiguous_format:
                try:
                    return self.probe.forward(inputs.contiguous(memory_format=self.layout)).float()
                except RuntimeError:
                    if not self._fallback:
                        raise
                    # a model that reshapes its input with .view() needs contiguous inputs
                    logger.info("the model rejects channels-last inputs; scoring with contiguous inputs")
                    self.layout = torch.contiguous_format
            return self.probe.forward(inputs).float()


def _cropped_to_pixel_set(target: BoundTarget) -> tuple[BoundTarget, tuple[slice, ...]]:
    """The target restricted to the bounding box of M (over all samples), and that crop of the output.

    A segmentation score only reads pixels in M and every per-pixel probability depends
    on that pixel's logits alone, so scoring the crop is exact and skips the softmax
    over the rest of the volume.
    """
    if target.mask is None:
        return target, (slice(None),)
    covered = target.mask.any(dim=0)
    box = []
    for axis in range(covered.ndim):
        others = tuple(a for a in range(covered.ndim) if a != axis)
        hits = (covered.any(dim=others) if others else covered).nonzero().flatten()
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    crop = (slice(None), slice(None), *box)
    return target.with_mask(target.mask[(slice(None), *box)]), crop


def upsampled_weighted_sum(
    masks: Tensor, weights: Tensor, size: tuple[int, ...], *, chunk: int = DEFAULT_BATCH_SIZE
) -> Tensor:
    """``sum_q w_q mm(U(m_q))`` at input resolution, ``chunk`` masks at a time (bounded memory)."""
    total = torch.zeros(size, device=masks.device)
    for rows in batch_ranges(masks.shape[0], chunk):
        upsampled = mask_to_input(masks[rows], size, normalize=True)
        total += torch.tensordot(weights[rows].to(upsampled.dtype), upsampled, dims=1)
    return total


def group_scores(probabilities: Tensor, baseline: Tensor) -> tuple[Tensor, bool]:
    """Group-CAM weights s_g = ReLU(p_g - p_blur), and whether the fallback applied.

    When no group raises the score above the blurred input, every s_g is 0 and the
    paper's map is undefined (the reference code returns nothing). medcam then
    weights groups by their score above the weakest group, ``p_g - min_g p_g``, and
    equally if all scores tie, so the map is never silently blank; the caller logs it.
    """
    gain = probabilities - baseline
    if probabilities.numel() == 0 or bool((gain > 0).any()):
        return gain.clamp_min(0), False
    relative = probabilities - probabilities.min()
    if bool((relative > 0).any()):
        return relative, True
    return torch.ones_like(probabilities), True


Finisher = Callable[[], dict[str, Tensor]]


class RegionMethod(CAMMethod):
    """A method that scores masked inputs; its work is split so other methods can share batches.

    :meth:`submit` queues the masked inputs for a captured pass and returns a function
    that builds the post-processed maps once the queue ran.
    """

    needs_gradients = False
    batch_size: int
    precision: str
    memory_format: str

    def uses_gradients(self) -> bool:
        """Whether the captured pass must include the gradients of the target score."""
        return self.needs_gradients

    def window_region(self, segmentation: bool = False) -> WindowRegion:
        """How this method's masks are built and weighted over sliding windows, for a target of that kind."""
        raise NotImplementedError

    @abstractmethod
    def submit(self, capture: Capture, queue: ScoreQueue, post: PostProcessing, stats: dict[str, Any]) -> Finisher:
        """Queue this method's masked inputs; the returned callable gives maps ``(N, *S)`` per layer.

        Diagnostics (channels skipped, fallbacks) go into ``stats`` under ``"layers"``.
        """

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        capture = probe.capture(x, layers, target, gradients=self.uses_gradients())
        queue = ScoreQueue(
            probe,
            x,
            capture.target,
            batch_size=self.batch_size,
            precision=self.precision,
            memory_format=self.memory_format,
        )
        stats: dict[str, Any] = {}
        finish = self.submit(capture, queue, post, stats)
        queue.run()
        maps = finish()
        stats.update(forward_passes=queue.forwards + 1, scored_inputs=queue.images, precision=queue.precision)
        return MethodResult(maps, capture.target, capture.output, stats=stats)


def _normalised_channels(acts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel min-max of ``(N, K, *s)`` as ``(N, K, P)`` rows, and which channels are constant."""
    rows = acts.flatten(2).float()
    low = rows.amin(dim=2, keepdim=True)
    span = rows.amax(dim=2, keepdim=True) - low
    constant = span.squeeze(2) == 0
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (rows - low) / safe, torch.zeros_like(rows)), constant


def gradcam_weights(gradients: Tensor) -> Tensor:
    """Grad-CAM channel weights ``(N, K)``: the spatial mean of the gradients."""
    return gradients.mean(dim=spatial_dims(gradients, channels=True))


class ScoreCAM(RegionMethod):
    """Score-CAM (Wang et al. 2020): L = mm(ReLU(sum_k s_k U(A_k))).

    s_k = p_c(x_b + H_k (X - x_b)), H_k = mm(U(A_k)) (``mask="soft"``) or its top
    ``mask_top`` fraction (``"binary"``), x_b the ``baseline`` (zeros: X * H_k, the
    official code's); channels with a constant map are skipped. ``mask``, ``mask_top``
    and ``baseline`` default to ``"auto"``: soft over zeros for classifiers, binary top
    1 % over :data:`SEGMENTATION_BASELINE` for segmentation targets (see :class:`Masking`).
    ``weights="increase"``: s_k = p_c(masked) - p_c(x_b), the paper's increase of
    confidence (its Eq. 2) with probabilities. ``weights="softmax_over_channels"``:
    the paper's Algorithm 1 (weights = softmax over channels of the logit increase of
    confidence; the baseline term is one constant for all channels and cancels in the
    softmax), as pytorch-grad-cam implements it: logit scores (segmentation: summed over
    M), every channel counts (a constant one is scored on the baseline input), masks
    upsampled with ``align_corners=True``, ReLU before the resize.

    ``max_channels=K`` scores only the K channels with the largest Grad-CAM weights
    (one extra backward pass): an approximation, see docs/methods-region-fusion.md.
    Channels whose normalised masks are identical share one forward pass.
    """

    name = "scorecam"

    def __init__(
        self,
        batch_size: int = DEFAULT_BATCH_SIZE,
        weights: str = AUTO,
        precision: str = "fp32",
        max_channels: int | None = None,
        memory_format: str = "auto",
        mask: str = AUTO,
        mask_top: float | str = AUTO,
        baseline: BaselineSpec = AUTO,
    ) -> None:
        check_region_options(batch_size, precision, memory_format)
        self.masking = Masking(mask, mask_top, baseline)
        if weights != AUTO and weights not in SCORECAM_WEIGHTS:
            raise UserError(f"weights={weights!r} is not known; use one of {(AUTO, *SCORECAM_WEIGHTS)}")
        if max_channels is not None and (
            isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1
        ):
            raise UserError(f"max_channels must be a positive integer or None, got {max_channels!r}")
        self.batch_size = batch_size
        self.weights = weights
        self.precision = precision
        self.max_channels = max_channels
        self.memory_format = memory_format

    def uses_gradients(self) -> bool:
        return self.max_channels is not None

    def submit(self, capture: Capture, queue: ScoreQueue, post: PostProcessing, stats: dict[str, Any]) -> Finisher:
        segmentation = capture.target.is_segmentation
        weighting = self.resolved_weights(segmentation)
        pgc = weighting == "softmax_over_channels"
        mask, spec = self.masking.resolve(segmentation)
        top = self.masking.resolved_top(segmentation) if mask == "binary" else None
        base = queue.baseline(spec)
        base_ticket = queue.baseline_ticket(spec) if weighting == "increase" else None
        stats.setdefault("masking", {})[self.name] = {**self.masking.describe(segmentation), "weights": weighting}
        plans: dict[str, list[tuple[Tensor, Tensor, int]]] = {}
        layers: dict[str, dict[str, int]] = stats.setdefault("layers", {})
        for alias, acts in capture.activations.items():
            rows, constant = _normalised_channels(acts)
            chosen = self._chosen_channels(capture, alias, acts)
            plans[alias] = []
            layer = {"channels": acts.shape[1], "constant": 0, "scored": 0}
            for n in range(acts.shape[0]):
                channels = chosen[n]
                layer["constant"] += int(constant[n, channels].sum())
                if not pgc:  # a constant channel gives no mask; the reference code skips it
                    channels = channels[~constant[n, channels]]
                unique, inverse = torch.unique(rows[n, channels], dim=0, return_inverse=True)
                layer["scored"] += unique.shape[0]
                masks = unique.view(-1, *acts.shape[2:])
                samples = torch.full((masks.shape[0],), n, dtype=torch.long)
                ticket = queue.add(MaskedInputs(masks, samples, base, align_corners=pgc, logits=pgc, top=top))
                plans[alias].append((channels, inverse, ticket))
            layers[alias] = layer

        def finish() -> dict[str, Tensor]:
            maps = {}
            reference = None if base_ticket is None else queue[base_ticket].probability
            for alias, acts in capture.activations.items():
                weights = torch.zeros(acts.shape[:2], device=acts.device)
                for n, (channels, inverse, ticket) in enumerate(plans[alias]):
                    if channels.numel() == 0:
                        continue
                    scores = queue[ticket]
                    if scores.logit is not None:  # softmax_over_channels
                        weights[n, channels] = scores.logit[inverse].to(weights.device).softmax(dim=0)
                    elif reference is not None:  # weights="increase"
                        gain = scores.probability[inverse] - reference[n]
                        weights[n, channels] = gain.to(weights.device)
                    else:
                        weights[n, channels] = scores.probability[inverse].to(weights.device)
                blank = (weights == 0).all(dim=1).nonzero().flatten().tolist()
                if blank:
                    logger.warning("Score-CAM at %s: all channels constant in sample(s) %s; map blank", alias, blank)
                raw = (weights.view(*weights.shape, *([1] * (acts.ndim - 2))) * acts.float()).sum(dim=1)
                if not pgc:
                    # Score-CAM: L = mm(ReLU(sum_k s_k U(A_k))) = mm(ReLU(U(sum_k s_k A_k))), U linear;
                    # the pytorch-grad-cam variant keeps its ReLU before the resize
                    raw = upsample(raw, queue.size)
                maps[alias] = post.apply(raw, queue.size)
            return maps

        return finish

    def window_region(self, segmentation: bool = False) -> WindowRegion:
        """Score-CAM's masks over sliding windows (:mod:`medcam.methods.region_windows`), as for the target."""
        mask, spec = self.masking.resolve(segmentation)
        increase = self.resolved_weights(segmentation) == "increase"
        zeros = isinstance(spec, str) and spec == "zeros"

        def baseline(x: Tensor) -> Tensor:
            return baseline_image(x, spec)

        return WindowRegion(
            self.name,
            self.batch_size,
            self.precision,
            max_channels=self.max_channels,
            baseline=None if zeros and not increase else baseline,
            increase=increase,
            top=self.masking.resolved_top(segmentation) if mask == "binary" else None,
        )

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        segmentation = context.target.is_segmentation
        if self.resolved_weights(segmentation) == "softmax_over_channels":
            return None  # pytorch-grad-cam's variant (logit softmax over channels) is defined on whole inputs only
        return RegionWindowStitcher(context, self.window_region(segmentation))

    def resolved_weights(self, segmentation: bool) -> str:
        """``weights`` with ``"auto"`` resolved: probability for classifiers, increase for segmentation."""
        if self.weights != AUTO:
            return self.weights
        return SEGMENTATION_WEIGHTS if segmentation else "probability"

    def _chosen_channels(self, capture: Capture, alias: str, acts: Tensor) -> list[Tensor]:
        count, channels = acts.shape[0], acts.shape[1]
        if self.max_channels is None or self.max_channels >= channels:
            return [torch.arange(channels, device=acts.device) for _ in range(count)]
        if capture.gradients is None:
            raise RuntimeError("max_channels needs a captured pass with gradients")
        top = gradcam_weights(capture.gradients[alias]).topk(self.max_channels, dim=1).indices
        return [row.sort().values for row in top]


class GroupCAM(RegionMethod):
    """Group-CAM (Zhang et al. 2021): L = mm(ReLU(sum_g s_g M_g)).

    Channels are split into ``groups`` contiguous groups; M_g = mm(U(ReLU(sum_{k in g}
    w_k A_k))) with Grad-CAM weights w_k; the masked input blends X with its blur,
    X * M_g + blur(X) * (1 - M_g); s_g = ReLU(p_c(masked) - p_c(blur(X))). The blur is
    Gaussian with kernel ``blur_kernel`` and sigma ``blur_sigma`` at 224 px, scaled per
    axis with the input size. A constant group map is the blurred input itself
    (s_g = 0) and is not scored.
    """

    name = "groupcam"
    needs_gradients = True

    def __init__(
        self,
        groups: int = 32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        blur_kernel: int = BLUR_KERNEL,
        blur_sigma: float = BLUR_SIGMA,
        memory_format: str = "auto",
        mask: str = AUTO,
        mask_top: float | str = AUTO,
        baseline: BaselineSpec = AUTO,
    ) -> None:
        check_region_options(batch_size, precision, memory_format)
        self.masking = Masking(mask, mask_top, baseline, classifier="groupcam-blur")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise UserError(f"groups must be a positive integer, got {groups!r}")
        if blur_kernel < 1 or blur_kernel % 2 == 0 or blur_sigma <= 0:
            raise UserError(
                f"the blur needs an odd kernel >= 1 and sigma > 0, got blur_kernel={blur_kernel}, "
                f"blur_sigma={blur_sigma}"
            )
        self.groups = groups
        self.batch_size = batch_size
        self.precision = precision
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma
        self.memory_format = memory_format

    def group_maps(self, acts: Tensor, gradients: Tensor) -> Tensor:
        """ReLU of each group's Grad-CAM-weighted channel sum: ``(N, G, *s)``, G = min(groups, K)."""
        weights = gradcam_weights(gradients)
        weighted = weights.view(*weights.shape, *([1] * (acts.ndim - 2))) * acts.float()
        chunks = torch.tensor_split(weighted, min(self.groups, acts.shape[1]), dim=1)
        return torch.stack([chunk.sum(dim=1) for chunk in chunks], dim=1).clamp_min(0)

    def window_region(self, segmentation: bool = False) -> WindowRegion:
        """Group-CAM's masks over sliding windows (:mod:`medcam.methods.region_windows`), as for the target."""
        mask, spec = self.masking.resolve(segmentation)

        def blurred(x: Tensor) -> Tensor:
            if isinstance(spec, str) and spec == "groupcam-blur":
                return blur_baseline(x, self.blur_kernel, self.blur_sigma)
            return baseline_image(x, spec)

        return WindowRegion(
            self.name,
            self.batch_size,
            self.precision,
            group_maps=self.group_maps,
            group_scores=group_scores,
            baseline=blurred,
            top=self.masking.resolved_top(segmentation) if mask == "binary" else None,
        )

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        segmentation = context.target.is_segmentation
        return RegionWindowStitcher(context, self.window_region(segmentation))

    def submit(self, capture: Capture, queue: ScoreQueue, post: PostProcessing, stats: dict[str, Any]) -> Finisher:
        if capture.gradients is None:
            raise RuntimeError("Group-CAM needs a captured pass with gradients")
        count = queue.x.shape[0]
        segmentation = capture.target.is_segmentation
        mask, spec = self.masking.resolve(segmentation)
        top = self.masking.resolved_top(segmentation) if mask == "binary" else None
        if isinstance(spec, str) and spec == "groupcam-blur":  # with this instance's kernel and sigma
            spec = blur_baseline(queue.x, self.blur_kernel, self.blur_sigma)
        blurred, base_ticket = queue.baseline(spec), queue.baseline_ticket(spec)
        stats.setdefault("masking", {})[self.name] = self.masking.describe(segmentation)
        plans: dict[str, list[tuple[Tensor, int]]] = {}
        layers: dict[str, dict[str, int]] = stats.setdefault("layers", {})
        for alias, acts in capture.activations.items():
            groups = self.group_maps(acts, capture.gradients[alias])
            _, constant = _normalised_channels(groups)
            plans[alias] = []
            for n in range(count):
                masks = groups[n, ~constant[n]]
                samples = torch.full((masks.shape[0],), n, dtype=torch.long)
                plans[alias].append((masks, queue.add(MaskedInputs(masks, samples, blurred, top=top))))
            empty = constant.all(dim=1).nonzero().flatten().tolist()
            if empty:
                logger.warning(
                    "Group-CAM at %s: every group map is empty for sample(s) %s (the Grad-CAM weights "
                    "give no positive evidence), so the map is blank; try another layer or scorecam",
                    alias,
                    empty,
                )
            layers[alias] = {"groups": groups.shape[1], "constant": int(constant.sum()), "empty_samples": len(empty)}

        def finish() -> dict[str, Tensor]:
            baseline = queue[base_ticket].probability
            maps = {}
            for alias in capture.activations:
                raw, fallback = [], []
                for n, (masks, ticket) in enumerate(plans[alias]):
                    scores, fell_back = group_scores(queue[ticket].probability, baseline[n])
                    if fell_back:
                        fallback.append(n)
                    raw.append(upsampled_weighted_sum(masks, scores, queue.size, chunk=self.batch_size))
                if fallback:
                    logger.warning(
                        "Group-CAM at %s: no group raises the class score above the blurred input for "
                        "sample(s) %s; groups are weighted by their score relative to the weakest group",
                        alias,
                        fallback,
                    )
                layers[alias]["no_gain_samples"] = len(fallback)
                maps[alias] = post.apply(torch.stack(raw), queue.size)
            return maps

        return finish
