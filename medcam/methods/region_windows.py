"""Region and ensemble methods over sliding windows: Score-CAM, Group-CAM, Union-CAM and Fusion-CAM on whole volumes.

What is computed (docs/methods-region-fusion.md, "Whole volumes: region methods over
sliding windows"), for a volume cut into windows ``w`` with blending weights ``imp_w``
and ``norm = sum_w imp_w``, exactly as the sliding-window predictor blends logits:

* channel maps are the layer's activations stitched the same way,
  ``A_k = sum_w imp_w U(a_w,k) / norm`` over every window (``U``: linear upsampling to
  the window), on the volume; Group-CAM's group maps are stitched per window
  (``ReLU(sum_{k in g} w_k a_w,k)``, ``w_k`` the Grad-CAM weight of the whole stitched
  score: the gradient summed over every window, divided by one window's feature positions);
* a mask is ``H = mm(A)`` over the volume and a masked volume ``base + H (X - base)``;
* its score is the sliding-window predictor's: the mean class probability over M of
  the stitched, blended logits. A window whose blending support misses M has no weight
  on M, so only the windows meeting M are re-run for each masked volume
  (:class:`~medcam.methods.base.WindowScorer`); the clean pass serves everything else;
* the map is the methods' own sum, ``sum_k s_k A_k`` (Score-CAM) or ``sum_g s_g H_g``
  (Group-CAM), stitched once at the end from the windows' feature maps (it is linear in
  them), then ReLU and normalisation over the volume. Union-CAM and Fusion-CAM combine
  that region map with their gradient map stitched like the gradient methods' maps
  (per-window channel weights) and score their contributions ``beta(L)`` with the same
  predictor.

With one window covering the volume every step is the direct computation. Memory: the
windows' feature maps are cached at feature resolution (re-captured per channel chunk
when they do not fit ``CACHE_BYTES``); channels are stitched a few at a time
(``STITCH_BYTES``), so no tensor of channels x volume is ever built.

Why one module of this size: the four methods share the stitched channel maps, the
feature cache and the masked-volume scoring; split per method, each would repeat them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from medcam.core.combine import (
    agreement_fusion,
    contribution_weights,
    denoise_below_percentile,
    per_sample,
    similarity_fusion,
)
from medcam.core.memory import release_free_memory
from medcam.core.ops import minmax, normalize, upsample
from medcam.core.perturbation import BaselineSpec, baseline_image, binarise_top, blend, resize
from medcam.core.probe import Probe
from medcam.core.windows import Job, WeightedLogits, WindowError
from medcam.methods.base import (
    COST_LOGGER,
    Combine,
    CombineStitcher,
    PostProcessing,
    WindowContext,
    WindowMaps,
    WindowPasses,
    WindowScorer,
    WindowStitcher,
)

logger = logging.getLogger(__name__)
# the cost of a region method over windows, announced before the masked passes start (the CLI shows it)
cost_logger = logging.getLogger(COST_LOGGER)

CACHE_BYTES = 1 << 30  # windows' feature maps kept at feature resolution
# a cache larger than this in float32 is kept in float16 (half the memory; rounding 2^-11 relative, ~5e-4)
EXACT_CACHE_BYTES = 256 << 20
HALF_MAX = 65504.0  # float16's largest finite value: a window beyond it stays float32
STITCH_BYTES = 256 << 20  # stitched maps on the volume held at once

INTERNAL = PostProcessing(relu=True, normalization="minmax")  # maps inside an ensemble (docs/methods-region-fusion.md)

Scores = Callable[[Tensor, Tensor], tuple[Tensor, bool]]


@dataclass(frozen=True)
class WindowRegion:
    """How a region method builds and weights its masks; given by the method (:mod:`medcam.methods.region`).

    Score-CAM: channels as masks over ``baseline(x)`` (``None``: all zeros), weighted by
    the probability or, with ``increase``, its increase over the baseline's; optionally the
    ``max_channels`` with the largest Grad-CAM weights. Group-CAM: ``group_maps(acts,
    gradients)``, masks over ``baseline(x)``, weights ``group_scores(p, p_base)``.
    """

    name: str
    batch_size: int
    precision: str
    max_channels: int | None = None
    group_maps: Callable[[Tensor, Tensor], Tensor] | None = None
    group_scores: Scores | None = None
    baseline: Callable[[Tensor], Tensor] | None = None
    increase: bool = False  # Score-CAM weights="increase": s_k = p(masked) - p(baseline)
    top: float | None = None  # mask="binary": the kept fraction of each stitched map (None: soft masks)

    @property
    def needs_gradients(self) -> bool:
        return self.group_maps is not None or self.max_channels is not None


def _key(sample: int, window: tuple[slice, ...]) -> Hashable:
    return (sample, *(int(s.start) for s in window))  # slices are not hashable before Python 3.12


def count_parts(total: int, budget: int) -> int:
    """How many parts of at most ``budget`` bytes hold ``total`` bytes (at least one)."""
    return max(1, math.ceil(total / budget))


class _Run:
    """One call's shared state: the passes, the scorer, the cached window feature maps."""

    def __init__(self, passes: WindowPasses, context: WindowContext, region: WindowRegion, name: str) -> None:
        self.passes = passes
        self.name = name  # the explained method (an ensemble's, not its region part's)
        self.context = context
        self.region = region
        self.label = f"{name} windows"
        layout = context.layout
        self.importance = context.importance.float().cpu()
        self.norm = context.norm.float().cpu()
        self.crop = layout.crop
        self.outside: Tensor | None = None
        if any(layout.pad):
            self.outside = torch.ones(layout.padded, dtype=torch.bool)
            self.outside[self.crop] = False
        self.weights: dict[str, Tensor] = {}  # Grad-CAM weights (N, K) per layer
        self.cache: dict[str, dict[Hashable, Tensor]] = {}
        self.cache_dtype = torch.float32  # float16 when the float32 cache would exceed EXACT_CACHE_BYTES
        self.clean_passes = 0
        self.clean_seconds = 0.0
        self.scorer: WindowScorer | None = None
        self.counts: dict[str, int] = {}  # sources per layer
        self.layer_stats: dict[str, dict[str, int]] = {}

    # ---------------------------------------------------------------- passes over windows

    def gradient_pass(self, take: Callable[[Any, Sequence[Job]], None] | None) -> None:
        """Windows meeting M with their share of the target: Grad-CAM weights of the stitched score."""
        probe, layers = self.passes.probe, self.context.layers
        positions: dict[str, int] = {}
        for patches, target, jobs in self.passes.target_batches(None, f"{self.label}: gradients"):
            capture = probe.capture(patches, layers, target, gradients=True)
            assert capture.gradients is not None
            for alias, grads in capture.gradients.items():
                sums = grads.float().flatten(2).sum(dim=2).cpu()
                positions[alias] = grads[0, 0].numel()
                if alias not in self.weights:
                    self.weights[alias] = torch.zeros(self.context.samples, grads.shape[1])
                for row, (b, _) in enumerate(jobs):
                    self.weights[alias][b] += sums[row]
            if take is not None:
                take(capture, jobs)
        for alias in self.weights:
            self.weights[alias] /= positions[alias]

    def captures(self) -> Iterator[tuple[list[Job], dict[str, Tensor]]]:
        """A clean pass over every window: the captured activations per layer."""
        probe, layers, target = self.passes.probe, self.context.layers, self.context.target
        for patches, jobs in self.passes.clean_batches():
            start = time.perf_counter()
            capture = probe.capture(patches, layers, target, gradients=False)
            self.clean_seconds += time.perf_counter() - start
            self.clean_passes += len(jobs)
            yield jobs, capture.activations

    def sources(self, alias: str, acts: Tensor, jobs: list[Job]) -> Tensor:
        """The maps whose masks are scored, per window at feature resolution: channels or groups."""
        if self.region.group_maps is None:
            return acts.float()
        weights = torch.stack([self.weights[alias][b] for b, _ in jobs]).to(acts.device)
        # group_maps takes gradients; constant gradients give exactly these Grad-CAM weights
        spread = weights.view(*weights.shape, *([1] * (acts.ndim - 2))).expand_as(acts)
        return self.region.group_maps(acts, spread).float()

    def fill_cache(self, chunk: int, chunks: int | None) -> int:
        """Capture every window and keep chunk ``chunk`` of the sources on the CPU; returns the chunk count.

        ``chunks=None``: decided on the first batch, as few as keep the cache within ``CACHE_BYTES``.
        """
        self.cache = {alias: {} for alias in self.context.layers}
        windows = len(self.context.layout.slices) * self.context.samples
        for jobs, activations in self.captures():
            found = {alias: self.sources(alias, acts, jobs) for alias, acts in activations.items()}
            if chunks is None:
                per_window = sum(f[0].numel() * 4 for f in found.values())
                if per_window * windows > EXACT_CACHE_BYTES:
                    self.cache_dtype, per_window = torch.float16, per_window // 2
                chunks = count_parts(per_window * windows, CACHE_BYTES)
                self.counts = {alias: int(f.shape[1]) for alias, f in found.items()}
            for alias, maps in found.items():
                rows = self.chunk_rows(alias, chunk, chunks)
                for row, job in enumerate(jobs):
                    self.cache[alias][_key(*job)] = self.store(maps[row, rows])
        assert chunks is not None
        return chunks

    def store(self, maps: Tensor) -> Tensor:
        """One window's sources as cached: float16 when the cache is large, unless they exceed its range."""
        if self.cache_dtype == torch.float16 and float(maps.abs().amax()) <= HALF_MAX:
            return maps.to("cpu", torch.float16)
        return maps.cpu().clone()

    def cached(self, alias: str, sample: int, window: tuple[slice, ...]) -> Tensor:
        """One window's cached sources in float32."""
        return self.cache[alias][_key(sample, window)].float()

    def chunk_rows(self, alias: str, chunk: int, chunks: int) -> slice:
        size = math.ceil(self.counts[alias] / chunks)
        return slice(chunk * size, min((chunk + 1) * size, self.counts[alias]))

    # ---------------------------------------------------------------- stitching

    def stitch(
        self,
        alias: str,
        sample: int,
        mix: Callable[[Tensor], Tensor],
        count: int,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``sum_w imp_w U(mix(src_w)) / norm`` on the padded grid, ``count`` maps ``(count, *padded)``."""
        layout = self.context.layout
        total = torch.zeros(count, *layout.padded, dtype=dtype)
        importance = self.importance.to(dtype)
        for window in layout.slices:
            source = mix(self.cached(alias, sample, window))
            part = resize(source, layout.roi) if dtype == torch.float32 else upsample(source.to(dtype), layout.roi)
            total[(slice(None), *window)] += part * importance
        return total.div_(self.norm.to(dtype))

    # ---------------------------------------------------------------- scoring

    def masked(self, sample: int, key: Hashable, mask: Tensor, base: Tensor | None) -> None:
        """Queue the masked volume ``base + mask (x - base)`` (mask on the padded grid) on the windows meeting M."""
        assert self.scorer is not None
        x = self.passes.padded_x
        for window in self.passes.meeting[sample]:
            region = (slice(sample, sample + 1), slice(None), *window)
            patch_base = None if base is None else base[region].cpu()
            patch = blend(x[region].cpu(), mask[window][None], patch_base)
            self.scorer.add(sample, key, window, patch[0])

    def binary_mask(self, values: Tensor, fraction: float) -> Tensor:
        """The top ``fraction`` of a map on the volume as a 0/1 mask on the padded grid (ranked over the volume)."""
        return self.volume_mask(binarise_top(values[None], fraction)[0])

    def volume_mask(self, values: Tensor) -> Tensor:
        """A mask on the volume brought to the padded grid: 1 in the padding, so a masked volume pads like X."""
        if self.outside is None:
            return values
        full = torch.ones(self.context.layout.padded)
        full[self.crop] = values
        return full

    def padded_base(self, image: Tensor | None) -> Tensor | None:
        """A baseline image of the volume on the padded grid (padded like the input).

        A constant baseline (air: ``"min"``, ``"mean"``, a number) becomes a broadcast view of
        its value, not a volume in memory. Its value in the padding does not matter: masks
        are 1 there, and ``b + 1 (x - b)`` is ``x`` (exactly so for zero padding).
        """
        if image is None:
            return None
        low, high = torch.aminmax(image.flatten(2), dim=2)
        if torch.equal(low, high):
            shape = (*image.shape[:2], *self.context.layout.padded)
            return low.view(*low.shape, *([1] * (len(shape) - 2))).expand(shape)
        return self.passes.pad(image)


@dataclass
class _Region:
    """A region method's map of one layer and sample, built in three steps around the scorer."""

    alias: str
    sample: int
    rows: Tensor  # which sources are masks
    lows: dict[int, float]
    spans: dict[int, float]
    constant: int = 0


class RegionWindowStitcher(WindowStitcher):
    """Score-CAM and Group-CAM over sliding windows (see the module docstring)."""

    def __init__(self, context: WindowContext, region: WindowRegion) -> None:
        self.context = context
        self.region = region
        self.label = f"{region.name} windows"
        self.maps: dict[str, Tensor] = {}
        self.stats: dict[str, Any] = {}

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        raise RuntimeError("region methods over windows run through run(), not add()")

    def run(self, passes: WindowPasses) -> None:
        run = _Run(passes, self.context, self.region, self.region.name)
        raws = region_maps(run, extra_volumes=0)
        self.maps = {alias: self.context.post.apply(raw, self.context.layout.spatial) for alias, raw in raws.items()}
        self.stats = run_stats(run)
        assert run.scorer is not None
        run.scorer.close()

    def finish(self) -> WindowMaps:
        return WindowMaps(self.maps, {}, self.stats)


def run_stats(run: _Run) -> dict[str, Any]:
    scorer = run.scorer
    return {
        "layers": run.layer_stats,
        "windows_meeting_M": [len(w) for w in run.passes.meeting],
        "clean_window_passes": run.clean_passes,
        "masked_window_passes": 0 if scorer is None else scorer.passes,
        "masked_forward_s": 0.0 if scorer is None else round(scorer.seconds, 3),
        "clean_pass_s": round(run.clean_seconds, 3),
        "feature_cache": str(run.cache_dtype).removeprefix("torch."),
        "precision": run.region.precision,
        "windowed": "masked volumes scored by the sliding-window predictor (docs/methods-region-fusion.md)",
    }


def _plan_masks(run: _Run, alias: str, sample: int, total: int) -> Tensor:
    """The sources scored for one layer and sample: every one, or Score-CAM's ``max_channels``."""
    limit = run.region.max_channels
    if limit is None or limit >= total:
        return torch.arange(total)
    return run.weights[alias][sample].topk(limit).indices.sort().values


def region_maps(run: _Run, *, extra_volumes: int) -> dict[str, Tensor]:
    """The raw region map ``(N, *spatial)`` of every layer (before ReLU and normalisation).

    ``extra_volumes``: masked volumes per sample the caller scores afterwards (counted in the announced cost).
    """
    region, context, passes = run.region, run.context, run.passes
    if region.needs_gradients and not run.weights:
        run.gradient_pass(None)
    chunks = run.fill_cache(0, None)
    release_free_memory()  # the clean pass's temporaries: the masked passes that follow are the peak
    samples = range(context.samples)
    meeting = sum(len(m) for m in passes.meeting)
    windows = len(context.layout.slices) * context.samples
    plans = {(a, n): _plan_masks(run, a, n, count) for a, count in run.counts.items() for n in samples}
    planned = sum(len(rows) * len(passes.meeting[n]) for (_, n), rows in plans.items())
    planned += ((region.baseline is not None) + extra_volumes) * meeting
    per_pass = run.clean_seconds / max(run.clean_passes, 1)
    cost_logger.info(
        "%s: %d masked window passes (%s maps x %d of %d windows meeting M), about %.1f s at %.4f s per window "
        "(constant maps, found while stitching, are skipped)",
        run.name,
        planned,
        "+".join(str(c) for c in run.counts.values()),
        meeting,
        windows,
        planned * per_pass,
        per_pass,
    )
    run.scorer = passes.scorer(
        batch_size=region.batch_size, precision=region.precision, total=planned, label=f"{run.name} passes"
    )
    base: Tensor | None = None
    if region.baseline is not None:
        x = passes.padded_x[(slice(None), slice(None), *run.crop)]
        base = run.padded_base(region.baseline(x.float()).to(x.dtype))
        for n in samples:
            run.masked(n, ("base", n), run.volume_mask(torch.zeros(context.layout.spatial)), base)
    found: dict[tuple[str, int], _Region] = {key: _Region(*key, rows, {}, {}) for key, rows in plans.items()}
    for chunk in range(chunks):
        if chunk:
            run.fill_cache(chunk, chunks)
        for (alias, n), rows in plans.items():
            part = run.chunk_rows(alias, chunk, chunks)
            mine = rows[(rows >= part.start) & (rows < part.stop)]
            _score_masks(run, found[(alias, n)], mine - part.start, base, offset=part.start)
    scores = run.scorer.scores()
    raws: dict[str, Tensor] = {}
    for alias, count in run.counts.items():
        layer = {"channels" if region.group_maps is None else "groups": count, "constant": 0, "scored": 0}
        maps = []
        for n in samples:
            plan = found[(alias, n)]
            keys = sorted(plan.spans)
            layer["constant"] += plan.constant
            layer["scored"] += len(keys)
            probabilities = torch.tensor([scores[(alias, n, k)] for k in keys], dtype=torch.float32)
            constant = 0.0
            if region.group_scores is not None:
                weights, fell_back = region.group_scores(probabilities, torch.tensor(scores[("base", n)]))
                if fell_back:
                    logger.warning(
                        "Group-CAM at %s: no group raises the score above the blurred volume in sample %d; groups "
                        "are weighted by their score relative to the weakest group",
                        alias,
                        n,
                    )
                coefficients = {k: float(w) / plan.spans[k] for k, w in zip(keys, weights, strict=True)}
                constant = -sum(float(w) * plan.lows[k] / plan.spans[k] for k, w in zip(keys, weights, strict=True))
            else:
                reference = float(scores[("base", n)]) if region.increase else 0.0
                coefficients = {k: float(p) - reference for k, p in zip(keys, probabilities, strict=True)}
            maps.append(_final(run, alias, n, coefficients, constant, count, chunks))
        raws[alias] = maps[0][None] if len(maps) == 1 else torch.stack(maps)
        run.layer_stats[alias] = layer
    run.cache = {}  # an ensemble's steps after this need the maps only
    release_free_memory()
    return raws


def _score_masks(run: _Run, plan: _Region, rows: Tensor, base: Tensor | None, *, offset: int) -> None:
    """Stitch the cached sources ``rows`` a few at a time, normalise each over the volume, queue its masked volume."""
    layout = run.context.layout
    step = max(1, STITCH_BYTES // (4 * math.prod(layout.padded)))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]

        def pick(src: Tensor, part: Tensor = part) -> Tensor:
            return src[part]

        stitched = run.stitch(plan.alias, plan.sample, pick, len(part))
        inside = stitched[(slice(None), *run.crop)].flatten(1)
        low, high = torch.aminmax(inside, dim=1)
        del inside
        for i, row in enumerate(part.tolist()):
            span = float(high[i] - low[i])
            if span == 0:
                plan.constant += 1
                continue
            key = offset + row
            plan.lows[key], plan.spans[key] = float(low[i]), span
            if run.region.top is not None:
                mask = run.binary_mask(stitched[i][run.crop], run.region.top)
            else:
                mask = stitched[i].sub_(low[i]).div_(span)
                if run.outside is not None:
                    mask[run.outside] = 1.0
            run.masked(plan.sample, (plan.alias, plan.sample, key), mask, base)
        del stitched


def _final(
    run: _Run, alias: str, sample: int, coefficients: dict[int, float], constant: float, count: int, chunks: int
) -> Tensor:
    """``sum_q c_q G_q + constant`` on the volume: one stitch of the coefficient-weighted window sources.

    The blending weights sum to 1 at every voxel and so do the interpolation weights, so the
    constant is added to each window's mix at feature resolution, in float64 with the mix:
    Group-CAM's ``sum_g s_g (G_g - low_g) / span_g`` subtracts large, nearly equal terms,
    and the result, of the map's own size, is then stitched in float32 (one volume).
    """
    weights = torch.zeros(count, dtype=torch.float64)
    for k, c in coefficients.items():
        weights[k] = c
    view = (-1, *([1] * (run.context.layout.importance.ndim)))

    def mix(src: Tensor) -> Tensor:
        return ((src.double() * weights.view(view)).sum(0, keepdim=True) + constant).float()

    layout = run.context.layout
    if chunks == 1:
        total = run.stitch(alias, sample, mix, 1)[0]
    else:  # the sources did not fit the cache: one more clean pass, mixing every window as it comes
        total = torch.zeros(layout.padded)
        for jobs, activations in run.captures():
            found = run.sources(alias, activations[alias], jobs).cpu()
            for row, (b, window) in enumerate(jobs):
                if b == sample:
                    total[window] += resize(mix(found[row]), layout.roi)[0] * run.importance
        total.div_(run.norm)
    return total[run.crop]


class EnsembleWindowStitcher(WindowStitcher):
    """Union-CAM and Fusion-CAM over sliding windows: the gradient part stitched like the gradient methods',
    the region part as :class:`RegionWindowStitcher`, contributions scored by the sliding-window predictor."""

    def __init__(
        self,
        context: WindowContext,
        region: WindowRegion,
        *,
        name: str,
        gradient: Combine,
        theta: float,
        baseline: BaselineSpec,
        top: float | None = None,
        fusion: Fusion | None = None,
    ) -> None:
        self.context = context
        self.region = region
        self.name = name
        self.label = f"{name} windows"
        self.theta = theta
        self.baseline = baseline
        self.top = top  # binary masks for the contributions: the kept fraction of each map
        self.fusion = fusion  # Fusion-CAM's variant; None for Union-CAM
        # Fusion-CAM's segmentation variant ends with its guard (more masked volumes, the gradient maps kept)
        self.guarded = fusion is not None and fusion.variant == "segmentation"
        self.gradient = CombineStitcher(gradient, replace(context, post=INTERNAL))
        self.maps: dict[str, Tensor] = {}
        self.extras: dict[str, dict[str, Tensor]] = {}
        self.stats: dict[str, Any] = {}

    def skip(self, sample: int, window: tuple[slice, ...]) -> None:
        self.gradient.skip(sample, window)

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        raise RuntimeError("ensembles over windows run through run(), not add()")

    def run(self, passes: WindowPasses) -> None:
        context = self.context
        spatial = context.layout.spatial
        run = _Run(passes, context, self.region, self.name)
        run.gradient_pass(self.gradient.take)
        gradient_maps = self.gradient.finish().maps
        guard = 1 + 4 * len(context.layers) if self.guarded else 0
        raws = region_maps(run, extra_volumes=1 + 3 * len(context.layers) + guard)
        region_maps_ = {alias: INTERNAL.apply(raw, spatial) for alias, raw in raws.items()}
        del raws
        x = passes.padded_x[(slice(None), slice(None), *run.crop)].float()
        zeros = isinstance(self.baseline, str) and self.baseline == "zeros"
        base = None if zeros else run.padded_base(baseline_image(x, self.baseline))
        del x
        samples = range(context.samples)

        def beta(maps: dict[str, Tensor], tag: str) -> dict[str, Tensor]:
            for alias, m in maps.items():
                for n in samples:
                    shown = m[n].cpu()
                    mask = run.volume_mask(shown) if self.top is None else run.binary_mask(shown, self.top)
                    run.masked(n, (tag, alias, n), mask, base)
            found = scores_now()
            return {a: torch.tensor([found[(tag, a, n)] - empty[n] for n in samples]) for a in maps}

        assert run.scorer is not None
        pending: dict[Hashable, float] = {}

        def scores_now() -> dict[Hashable, float]:
            assert run.scorer is not None
            pending.update(run.scorer.scores())
            return pending

        empty_mask = run.volume_mask(torch.zeros(spatial))
        for n in samples:
            run.masked(n, ("empty", n), empty_mask, base)  # base None: X * 0, the all-zeros volume
        # volume-sized maps are freed as soon as no later step reads them (a KiTS CT is 200 MB a map)
        fusion = self.fusion is not None
        segmentation = self.guarded
        aliases = list(gradient_maps)
        if fusion:
            first = {a: denoise_below_percentile(m, self.theta) for a, m in gradient_maps.items()}
        else:
            first = gradient_maps
        if not segmentation:
            del gradient_maps  # only the segmentation guard reads it again
        found = scores_now()
        empty = [found[("empty", n)] for n in samples]
        beta_first = beta(first, "gradient")
        beta_region = beta(region_maps_, "region")
        combined = {}
        for alias in aliases:
            b_d, b_r = _as_weights(beta_first[alias], beta_region[alias], first[alias])
            mix = first.pop(alias).mul_(b_d) if fusion else first[alias] * b_d
            combined[alias] = minmax(mix.add_(region_maps_[alias] * b_r), inplace=True)
        del first
        beta_combined = beta(combined, "combined")
        post = context.post
        if fusion:
            agreement = {}
            betas = {
                a: {
                    "denoised_gradient": beta_first[a].tolist(),
                    "region": beta_region[a].tolist(),
                    "combined": beta_combined[a].tolist(),
                }
                for a in aliases
            }
            for alias in aliases:
                b_gr, b_r = _as_weights(beta_combined[alias], beta_region[alias], combined[alias])
                pair = (combined.pop(alias).mul_(b_gr), region_maps_.pop(alias).mul_(b_r))
                if segmentation:
                    fused, agreement[alias] = agreement_fusion(*pair)
                    self.maps[alias] = minmax(fused, inplace=True)
                else:
                    fused, agreement[alias] = similarity_fusion(*pair)
                    self.maps[alias] = normalize(fused, post.normalization, inplace=True)
                del pair, fused
            self.extras = {"agreement": agreement}
            assert self.fusion is not None
            self.stats = {"variant": self.fusion.variant, "betas": betas}
            if segmentation:
                guarded, self.stats["fallback"] = _guard(
                    run, self.fusion, gradient_maps, self.maps, betas, base, scores_now
                )
                self.maps = {a: normalize(m, post.normalization, inplace=True) for a, m in guarded.items()}
        else:
            chosen = {}
            for alias in aliases:
                better = beta_combined[alias] > beta_region[alias]
                pick = per_sample(better.float(), combined[alias]) > 0
                kept = torch.where(pick, combined.pop(alias), region_maps_.pop(alias))
                self.maps[alias] = normalize(kept, post.normalization, inplace=True)
                chosen[alias] = ["combined" if b else "region" for b in better.tolist()]
            self.stats = {"chosen": chosen}
        self.stats.update(run_stats(run))
        run.scorer.close()

    def finish(self) -> WindowMaps:
        return WindowMaps(self.maps, self.extras, self.stats)


@dataclass
class Fusion:
    """Fusion-CAM's variant over windows and its segmentation guard (:class:`~medcam.methods.fusion.FusionCAM`).

    ``variant``: ``"normalised"`` (similarity fusion) or ``"segmentation"`` (agreement
    fusion, then the guard: the gradient map replaces the fused one in a sample when every
    contribution is below ``tolerance`` x the clean score, or when the fused map's
    keep-top-k score, averaged over k = ``multiples`` x |M|, is below the gradient map's).
    """

    variant: str
    tolerance: float
    multiples: tuple[float, ...]


def _guard(
    run: _Run,
    fusion: Fusion,
    gradient_maps: dict[str, Tensor],
    fused_maps: dict[str, Tensor],
    betas: dict[str, dict[str, list[float]]],
    base: Tensor | None,
    scores_now: Callable[[], dict[Hashable, float]],
) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """The segmentation variant's guard over windows, as on a single input (docs/methods-region-fusion.md).

    Every score is the sliding-window predictor's on a masked volume: the clean score is the
    volume shown whole, a keep-top-k score the volume with only the map's top k voxels shown
    (ranked over the volume) and the rest the contributions' baseline.
    """
    context = run.context
    samples = range(context.samples)
    spatial = context.layout.spatial
    voxels = float(math.prod(spatial))
    assert context.target.mask is not None
    sizes = [max(1.0, float(context.target.mask[n].sum())) for n in samples]
    whole = run.volume_mask(torch.ones(spatial))
    for n in samples:
        run.masked(n, ("clean", n), whole, base)
    del whole
    for tag, maps in (("keep gradient", gradient_maps), ("keep fused", fused_maps)):
        for alias, m in maps.items():
            for n in samples:
                for k in fusion.multiples:
                    mask = run.binary_mask(m[n].cpu(), min(1.0, k * sizes[n] / voxels))
                    run.masked(n, (tag, alias, n, k), mask, base)
    found = scores_now()
    clean = torch.tensor([found[("clean", n)] for n in samples])

    def keep(tag: str, alias: str) -> Tensor:
        return torch.tensor([sum(found[(tag, alias, n, k)] for k in fusion.multiples) for n in samples]) / len(
            fusion.multiples
        )

    out, reasons = {}, {}
    for alias, fused in fused_maps.items():
        beta_g, beta_f = keep("keep gradient", alias), keep("keep fused", alias)
        parts = torch.tensor([betas[alias]["denoised_gradient"], betas[alias]["region"]])
        negligible = (parts < fusion.tolerance * clean).all(dim=0)
        worse = beta_f < beta_g
        reasons[alias] = [_reason(n, w) for n, w in zip(negligible.tolist(), worse.tolist(), strict=True)]
        kept = per_sample((~(negligible | worse)).float(), fused) > 0
        out[alias] = torch.where(kept, fused, gradient_maps[alias].to(fused.device))
        betas[alias].update(keep_gradient=beta_g.tolist(), keep_fused=beta_f.tolist(), clean=clean.tolist())
    return out, reasons


def _reason(negligible: bool, worse: bool) -> str:
    """Why the guard kept what it kept in one sample (``stats["fallback"]``, as on a single input)."""
    if negligible:
        return "betas negligible against the clean score"
    return "fused map scores below the gradient map" if worse else "fused"


def _as_weights(first: Tensor, second: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    a, b = contribution_weights(first, second)
    return per_sample(a, like), per_sample(b, like)


__all__ = [
    "CACHE_BYTES",
    "COST_LOGGER",
    "STITCH_BYTES",
    "EnsembleWindowStitcher",
    "Fusion",
    "RegionWindowStitcher",
    "WindowRegion",
]


def whole_input_only(name: str, reason: str, fix: str, context: WindowContext) -> None:
    """``None`` (the method then runs once on the whole padded input) when the volume fits one window.

    On a volume larger than one window, a one-line :class:`~medcam.core.windows.WindowError`
    naming the options that make the method run over windows.
    """
    if len(context.layout.slices) > 1:
        raise WindowError(
            f"{name} with {reason} is not computed over sliding windows yet, and the volume {context.layout.spatial} "
            f"is larger than the model's window {context.layout.roi}; pass {fix}, or use a gradient method"
        )
    return None
