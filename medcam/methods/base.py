"""The method contract: a method turns a probe, an input, a target and layers into maps.

It also says how it runs over sliding windows (the window protocol): a method returns a
:class:`WindowStitcher` from :meth:`CAMMethod.window_stitcher`; the one window loop
(:func:`medcam.pipeline.windows.sliding_window_cam`) hands it :class:`WindowPasses`
(each window's share of the target, clean passes over every window, a
:class:`WindowScorer` of masked volumes) and never asks what kind of method it is. A
method whose maps add up over windows only implements :meth:`WindowStitcher.add`; a
region method scores whole masked volumes and overrides :meth:`WindowStitcher.run`. A
method that returns ``None`` runs only when the volume fits one window.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from medcam.core.ops import Normalization, finalize, upsample
from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, Target
from medcam.core.windows import Job, WeightedLogits, Window, WindowLayout, at

Combine = Callable[[Tensor, Tensor], Tensor]

# the logger on which a method announces the cost of its passes over windows before they start (the CLI shows it)
COST_LOGGER = "medcam.cost"


@dataclass(frozen=True)
class PostProcessing:
    """Shared post-processing: ReLU on/off and the normalisation (the order of docs/methods.md)."""

    relu: bool = True
    normalization: Normalization = "minmax"

    def apply(self, raw: Tensor, size: tuple[int, ...]) -> Tensor:
        return finalize(raw, size, relu=self.relu, normalization=self.normalization)


@dataclass(frozen=True)
class MethodResult:
    """Maps at input resolution per layer alias, plus what the method learned on the way.

    ``extras`` holds further per-layer maps a method produces (Fusion-CAM's agreement,
    RobustCAM's uncertainty); ``stats`` holds scalar diagnostics for ``summary.json``.
    """

    maps: dict[str, Tensor]
    target: BoundTarget
    output: Tensor
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class CAMMethod(ABC):
    """Base of every method. Methods are stateless between calls and never keep hooks.

    Subclasses set ``name`` (the registry key) and implement :meth:`run`; gradient
    methods only implement :meth:`GradientMethod.combine`.
    """

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = True
    # window protocol: True when the raw maps of windows add up to the map of the volume
    window_decomposable: ClassVar[bool] = False

    @abstractmethod
    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        """Explain ``target`` for input ``x`` at ``layers``; maps are ``(N, *x.shape[2:])``."""

    def options(self) -> dict[str, Any]:
        """The method's settings, recorded in ``summary.json`` so a result can be replayed."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        """How this method runs over the windows of ``context``; ``None``: it needs the whole input at once."""
        return None


class GradientMethod(CAMMethod):
    """One forward, one backward, any number of layers: L = sum over channels of a weighting.

    Over sliding windows each window's raw map ``combine(A, G)`` is upsampled to the
    window and added on the model grid (exact for HiResCAM; per-window channel weights
    for Grad-CAM and its kin, docs/explain.md). A subclass that overrides :meth:`run`
    with something that does not add up sets ``window_decomposable = False``.
    """

    window_decomposable = True

    @abstractmethod
    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Raw map ``(N, *spatial)`` from activations and gradients ``(N, K, *spatial)``."""

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        capture = probe.capture(x, layers, target, gradients=True)
        return MethodResult(self.maps(capture, tuple(x.shape[2:]), post), capture.target, capture.output)

    def maps(self, capture: Capture, size: tuple[int, ...], post: PostProcessing) -> dict[str, Tensor]:
        """Post-processed maps of every captured layer (shared with methods built on this one)."""
        assert capture.gradients is not None  # capture(gradients=True) always fills them
        # float32 maps whatever precision the network ran in (bfloat16 autocast leaves bf16 tensors)
        return {
            alias: post.apply(self.combine(acts.float(), capture.gradients[alias].float()), size)
            for alias, acts in capture.activations.items()
        }

    def window_stitcher(self, context: WindowContext) -> WindowStitcher | None:
        return CombineStitcher(self.combine, context) if self.window_decomposable else None


def window_combine(method: CAMMethod) -> Combine | None:
    """The per-window ``(A, G) -> raw map`` of a method whose maps add up over windows, else ``None``."""
    combine = getattr(method, "combine", None)
    return combine if method.window_decomposable and callable(combine) else None


@dataclass(frozen=True, eq=False)
class WindowContext:
    """What a method knows about the windows of one call.

    ``layout`` places the windows on the padded model grid; ``samples`` is N; ``target``
    is the target bound on the stitched prediction (M on the unpadded grid);
    ``importance``/``norm`` are the blending weights of a window and their sum over
    windows (on the compute device); ``first_patch`` is the padded input's first window
    of sample 0, for methods that derive settings from the input once (RobustCAM's views).
    """

    layout: WindowLayout
    samples: int
    target: BoundTarget
    layers: Mapping[str, str]
    post: PostProcessing
    importance: Tensor
    norm: Tensor
    first_patch: Tensor


@dataclass(frozen=True)
class WindowMaps:
    """A stitcher's result on the (cropped) model grid: maps, extras and the method's own statistics."""

    maps: dict[str, Tensor]
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    method_stats: dict[str, Any] = field(default_factory=dict)


class WindowScorer(ABC):
    """Scores masked volumes with the sliding-window predictor, re-running only the windows that meet M.

    A masked volume (``key``) is handed over window by window: its input on every window
    of its sample that meets M (:attr:`WindowPasses.meeting`). Rows from many keys share
    batched forward passes; the blended logits are stitched on M only (the windows that
    miss M carry no weight there), and :meth:`scores` gives each key's target
    probability: the mean class probability over M of the stitched prediction.
    """

    passes: int = 0  # masked window rows run so far
    seconds: float = 0.0  # spent in their forward passes

    @abstractmethod
    def add(self, sample: int, key: Hashable, window: Window, patch: Tensor) -> None:
        """Queue the masked input ``(C, *roi)`` of volume ``key`` on ``window`` of ``sample``."""

    @abstractmethod
    def scores(self) -> dict[Hashable, float]:
        """Run every queued row; the probability of every masked volume whose windows have all run."""

    def close(self) -> None:  # noqa: B027 - a scorer without a progress bar has nothing to close
        """The last :meth:`scores` was read: close the progress bar."""


class WindowPasses(ABC):
    """What the window loop offers a stitcher: passes over the windows of one call.

    ``padded_x`` is the input on the padded model grid; ``meeting[n]`` the windows of
    sample ``n`` that meet M (in window order).
    """

    probe: Probe
    padded_x: Tensor
    meeting: list[list[Window]]
    progress: bool

    @abstractmethod
    def target_batches(self, rows: int | None, label: str) -> Iterator[tuple[Tensor, WeightedLogits, list[Job]]]:
        """The windows that meet M in batches of at most ``rows`` (``None``: the window batch size), with their
        share of the target; a progress bar over windows labelled ``label``."""

    @abstractmethod
    def clean_batches(self) -> Iterator[tuple[Tensor, list[Job]]]:
        """Every window of every sample (window batch size rows), the padded input's patches."""

    @abstractmethod
    def explain(
        self, method: CAMMethod, x: Tensor, target: BoundTarget, post: PostProcessing
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The window loop itself on another input of the volume's size (a view of it), with a bound target:
        maps on the volume and the method's statistics."""

    @abstractmethod
    def pad(self, image: Tensor) -> Tensor:
        """An image ``(N, C, *spatial)`` on the padded model grid, padded as the input is."""

    @abstractmethod
    def scorer(self, *, batch_size: int, precision: str, total: int, label: str) -> WindowScorer:
        """A scorer of masked volumes: ``batch_size`` rows per forward, ``precision`` as the region methods'
        option, a progress bar over ``total`` rows labelled ``label``."""


class WindowStitcher(ABC):
    """A method's partial results over the windows of one volume, and how they add up.

    The window loop calls :meth:`skip` for every window that misses M (in window order,
    before any pass), then :meth:`run`, then :meth:`finish`, which crops to the volume
    and post-processes. The default :meth:`run` calls :meth:`add` for the windows that
    meet M, in batches of at most ``rows`` windows (``None``: the window batch size),
    each batch with its share of the target (:class:`~medcam.core.windows.WeightedLogits`).
    """

    rows: int | None = None
    label: str = "CAM windows"

    def skip(self, sample: int, window: tuple[slice, ...]) -> None:  # noqa: B027 - most methods ignore it
        """A window that misses M: its map is zero; a stitcher may still count it."""

    def run(self, passes: WindowPasses) -> None:
        """All passes of this method; by default one :meth:`add` per batch of windows meeting M."""
        for patches, target, jobs in passes.target_batches(self.rows, self.label):
            self.add(passes.probe, patches, target, jobs)

    @abstractmethod
    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        """Explain ``target`` on ``patches`` ``(B, C, *roi)``, row ``r`` being window ``jobs[r]``."""

    @abstractmethod
    def finish(self) -> WindowMaps:
        """Maps on the volume's model grid (``layout.spatial``), post-processed."""


class CombineStitcher(WindowStitcher):
    """Gradient methods over windows: each window's ``combine(A, G)``, upsampled, added on the model grid."""

    def __init__(self, combine: Combine, context: WindowContext) -> None:
        self.combine = combine
        self.context = context
        padded = (context.samples, *context.layout.padded)
        self.sums = {alias: torch.zeros(padded, dtype=torch.float32) for alias in context.layers}

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        self.take(probe.capture(patches, self.context.layers, target, gradients=True), jobs)

    def take(self, capture: Capture, jobs: Sequence[Job]) -> None:
        """Add the raw maps of a captured batch of windows (with gradients) to the sums."""
        assert capture.gradients is not None
        for alias, acts in capture.activations.items():
            raw = self.combine(acts.float(), capture.gradients[alias].float())
            raw = upsample(raw, self.context.layout.roi).cpu()
            for row, (sample, window) in enumerate(jobs):
                self.sums[alias][at(sample, window)] += raw[row]

    def finish(self) -> WindowMaps:
        layout, post = self.context.layout, self.context.post
        crop = (slice(None), *layout.crop)
        maps = {}
        for alias in list(self.sums):
            total = self.sums.pop(alias)  # release each sum as soon as its map is done
            maps[alias] = finalize(
                total[crop], layout.spatial, relu=post.relu, normalization=post.normalization, inplace=True
            )
            del total
        return WindowMaps(maps)
