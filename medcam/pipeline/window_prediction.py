"""The stitched prediction taken from the CAM pass's own window outputs, when that is exact.

The window target of a score ``S = sum over p in M of f(Y(p))`` weighs each window's
output with ``df/dY`` at the stitched prediction Y (:func:`medcam.core.windows.window_weights`).
When S is linear in the output (one class's logit: ``df/dY`` is 1 on that class) the
weights are the same at every Y, and when M is known without Y (given as the image, a
box, a voxel or a mask file; or already bound), no window needs the prediction before its
CAM pass. Each window's forward pass of the CAM then is the prediction's forward pass:
:class:`OwnPrediction` blends those outputs as ``sliding_window_inference`` does
(:class:`~medcam.core.windows.BlendedOutputs`), the windows that miss M run one forward
without gradients, and the separate prediction pass is skipped.

The window loop (:mod:`medcam.pipeline.windows`) owns this: stitchers know nothing of
it. The loop's probe (:class:`WindowProbe`) keeps the output of any pass a stitcher runs
on the very patches the loop handed it; a batch whose stitcher ran no such pass gets a
forward pass of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from medcam.core.probe import Capture, Probe
from medcam.core.targets import BoundTarget, SegmentationTarget, Target, check_finite
from medcam.core.windows import BlendedOutputs, Job, WindowLayout, check_output_grid

# where the stitched prediction came from ("sliding_window"."prediction" in summary.json)
SEPARATE_PASS = "separate pass"
FROM_CAM_WINDOWS = "from CAM windows"


def own_prediction(target: Target | BoundTarget) -> bool:
    """Whether the CAM pass may stitch the prediction itself: the score is linear in the output and M is known.

    A bound target's M is fixed; a :class:`~medcam.core.targets.SegmentationTarget` needs
    a given M (image, box, voxel, mask). Anything else (M found on the prediction, a
    region's ``logsumexp``, another kind of target) returns ``False``.
    """
    if isinstance(target, BoundTarget):
        return target.linear
    return isinstance(target, SegmentationTarget) and target.linear and target.pixels_given


class WindowProbe(Probe):
    """The loop's probe: it keeps the output of a pass a stitcher runs on the patches the loop handed out."""

    watched: Tensor | None = None
    seen: Tensor | None = None

    def watch(self, patches: Tensor | None) -> None:
        self.watched, self.seen = patches, None

    def _note(self, x: Tensor, output: Tensor) -> None:
        if self.watched is not None and x is self.watched:
            self.seen = output.detach()

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        self._note(x, out)
        return out

    def capture(
        self, x: Tensor, layers: Mapping[str, str], target: Target | BoundTarget, *, gradients: bool
    ) -> Capture:
        found = super().capture(x, layers, target, gradients=gradients)
        self._note(x, found.output)
        return found


class OwnPrediction:
    """The prediction stitched from the window outputs of one call of the window loop.

    ``channels`` is the output's channel count once a window has run. ``forwards`` counts
    the windows run without gradients for the prediction alone; ``seconds`` is the time of
    the passes run for the prediction alone.
    """

    def __init__(self, probe: WindowProbe, layout: WindowLayout, samples: int, norm: Tensor, dtype: torch.dtype):
        self.probe = probe
        self.layout = layout
        self.samples = samples
        self.blended = BlendedOutputs(layout, samples, norm, dtype)
        self.channels: int | None = None
        self.forwards = 0
        self.seconds = 0.0

    def _run(self, patches: Tensor) -> Tensor:
        start = time.perf_counter()
        out = self.probe.forward(patches)
        self.seconds += time.perf_counter() - start
        check_output_grid(tuple(out.shape[2:]), self.layout.roi)
        self.channels = int(out.shape[1])
        return out

    def _add(self, outputs: Tensor, jobs: list[Job]) -> None:
        # what bind checks on a stitched prediction, window by window: blending keeps values finite
        check_finite(outputs)
        self.blended.add(outputs, jobs)

    def forward(self, patches: Tensor, jobs: list[Job]) -> None:
        """A pass for the prediction alone, stitched."""
        self._add(self._run(patches), jobs)
        self.forwards += len(jobs)

    def forward_only(
        self, jobs: list[Job], patches: Callable[[list[Job]], Tensor], batch_size: int, progress: bool = False
    ) -> None:
        """The windows that miss M: one forward pass each without gradients (``batch_size`` per pass)."""
        from tqdm.auto import tqdm

        with tqdm(total=len(jobs), desc="prediction", unit="window", disable=not progress, leave=False) as bar:
            for i in range(0, len(jobs), batch_size):
                batch = jobs[i : i + batch_size]
                self.forward(patches(batch), batch)
                bar.update(len(batch))

    def shape_only(self, first: Tensor) -> Tensor:
        """The padded prediction's shape as zeros without memory: a linear score's weights need nothing more.

        With no output yet (every window meets M), the first window ``first`` runs one
        forward pass to tell the output's channels; its output is not kept.
        """
        if self.channels is None:
            self._run(first)
        assert self.channels is not None
        shape = (self.samples, self.channels, *self.layout.padded)
        return torch.zeros((), device=self.blended.norm.device).expand(shape)

    def watch(self, patches: Tensor | None) -> None:
        """A batch of windows goes to the stitcher: keep the output of its pass on ``patches`` (``None``: stop)."""
        self.probe.watch(patches)

    def take(self, patches: Tensor, jobs: list[Job]) -> None:
        """The stitcher is done with the batch: stitch its output (or run a forward pass if it ran none)."""
        seen = self.probe.seen
        self.probe.watch(None)
        if seen is None or seen.shape[0] != len(jobs):
            self.forward(patches, jobs)
        else:
            self._add(seen, jobs)

    def result(self) -> Tensor:
        """The stitched prediction ``(N, C, *spatial)``, float32, as :func:`~medcam.core.windows.predict` gives it."""
        return self.blended.result()
