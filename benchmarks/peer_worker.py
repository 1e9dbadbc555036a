"""One measurement in a fresh process: one library, one method, one case.

Run by bench_peers.py, never imported. Builds the seeded model and input of the
case, times ``repeats`` explanation calls after one warm-up call, records peak
memory, saves the map and prints one JSON line. Runs in the project's environment,
or (library ``m3d-cam``) in the separate virtual environment whose ``medcam`` is
M3d-CAM's.

Time: wall-clock seconds per call (``perf_counter``) and the process's CPU seconds
per call (``process_time``, all threads), which a loaded machine disturbs less.

Memory: Linux ``VmHWM`` (peak resident set size) after resetting it through
``/proc/self/clear_refs``: the reported figure is the peak RSS during the FIRST
explanation call minus the RSS just before it (model built, one plain forward
already run), i.e. what the explanation itself adds, including any one-time setup
of the library. Where the reset is not allowed, the process's lifetime peak
(``ru_maxrss``) minus the same baseline is reported instead and marked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cases import CASES, Case, Goal, build, goal
from torch import Tensor, nn

Runner = Callable[[], np.ndarray]


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def minmax(t: Tensor) -> Tensor:
    dims = tuple(range(1, t.ndim))
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    return torch.where(hi > lo, (t - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(t))


class ScoreHead(nn.Module):
    """The model with its output reduced to the goal's score, shaped (N, 1) like a logit."""

    def __init__(self, net: nn.Module, target: Goal) -> None:
        super().__init__()
        self.net = net
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        return self.target.score(self.net(x)).unsqueeze(1)


def ours(case: Case, method: str, model: nn.Module, x: Tensor, g: Goal) -> tuple[Runner, dict[str, Any]]:
    import medcam

    if not hasattr(medcam, "explain"):
        raise RuntimeError(f"imported {medcam.__file__}, which is not this project's medcam")
    target: Any = medcam.ClassTarget(g.index) if g.mask is None else medcam.SegmentationTarget(g.index)

    def run() -> np.ndarray:
        return medcam.explain(model, x, method, target, layers=case.layer).map.numpy()

    def check() -> None:  # after the measurement, so that it warms nothing
        bound = medcam.explain(model, x, method, target, layers=case.layer).target
        if g.mask is not None and not torch.equal(bound.mask, g.mask.bool()):
            raise RuntimeError("medcam's predicted pixel set differs from the benchmark's M")

    return run, {"version": medcam.__version__, "module": medcam.__file__, "_check": check}


def grad_cam_library(case: Case, method: str, model: nn.Module, x: Tensor, g: Goal) -> tuple[Runner, dict[str, Any]]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "scorecam": pgc.ScoreCAM}
    layer = dict(model.named_modules())[case.layer]
    cam = classes[method](model=model, target_layers=[layer])
    if g.mask is None:
        targets: list[Any] = [ClassifierOutputTarget(g.index)]
    else:
        mask = g.mask[0]
        targets = [lambda out: (out[g.index] * mask).sum()]  # per-sample output (C, *spatial)

    def run() -> np.ndarray:
        return np.asarray(cam(input_tensor=x, targets=targets))

    from importlib.metadata import version

    return run, {"version": version("grad-cam")}


def captum_library(case: Case, method: str, model: nn.Module, x: Tensor, g: Goal) -> tuple[Runner, dict[str, Any]]:
    import captum
    from captum.attr import LayerAttribution, LayerGradCam

    layer = dict(model.named_modules())[case.layer]
    if g.mask is None:
        explainer = LayerGradCam(model, layer)
        options: dict[str, Any] = {"target": g.index}
    else:
        explainer = LayerGradCam(lambda inp: g.score(model(inp)), layer)
        options = {}
    mode = "bilinear" if x.ndim == 4 else "trilinear"

    def run() -> np.ndarray:
        attr = explainer.attribute(x, relu_attributions=True, **options)
        up = LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode=mode)
        return minmax(up[:, 0].detach()).numpy()

    return run, {"version": captum.__version__}


def monai_library(case: Case, method: str, model: nn.Module, x: Tensor, g: Goal) -> tuple[Runner, dict[str, Any]]:
    import monai
    from monai.visualize import GradCAM

    if g.mask is None:
        cam = GradCAM(nn_module=model, target_layers=case.layer)
        index = g.index
    else:  # MONAI scores logits[:, class_idx]; a head that outputs S makes that our target
        cam = GradCAM(nn_module=ScoreHead(model, g), target_layers="net." + case.layer)
        index = 0

    def run() -> np.ndarray:
        return cam(x, class_idx=index)[:, 0].detach().numpy()

    return run, {"version": monai.__version__, "note": "default postprocessing"}


def m3dcam_library(case: Case, method: str, model: nn.Module, x: Tensor, g: Goal) -> tuple[Runner, dict[str, Any]]:
    from importlib.metadata import version

    import medcam
    from medcam import medcam_inject

    if hasattr(medcam, "explain") or not medcam.__file__.startswith(sys.prefix):
        raise RuntimeError(f"imported {medcam.__file__}, not M3d-CAM's medcam inside {sys.prefix}")
    if g.mask is None:
        label: Any = g.index
    else:
        mask = g.mask

        def label(out: Tensor) -> Tensor:  # M3d-CAM backpropagates this mask: d/dA sum over M of logit_c
            grad = torch.zeros_like(out)
            grad[:, g.index] = mask
            return grad

    injected = medcam_inject.inject(model, backend="gcam", layer=case.layer, label=label, return_attention=True)

    def run() -> np.ndarray:
        _, attention = injected(x)
        return attention[:, 0].detach().cpu().numpy()

    return run, {"version": version("medcam"), "module": medcam.__file__}


LIBRARIES = {
    "medcam": ours,
    "pytorch-grad-cam": grad_cam_library,
    "captum": captum_library,
    "monai": monai_library,
    "m3d-cam": m3dcam_library,
}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    model, x = build(case)
    g = goal(case, model, x)
    run, info = LIBRARIES[args.library](case, args.method, model, x, g)
    with torch.no_grad():
        model(x)
    baseline = status_kb("VmRSS")
    exact = reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    first_map = run()
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    if exact:
        peak = status_kb("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    if first <= args.budget:
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            result = run()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu)
    else:
        result = first_map
    check = info.pop("_check", None)
    if check is not None:
        check()
    cam = np.asarray(result, dtype=np.float32).reshape(x.shape[0], *x.shape[2:])
    if not np.isfinite(cam).all():
        raise RuntimeError("the map contains NaN or Inf")
    np.save(args.map_out, cam)
    return {
        "status": "ok",
        "seconds": statistics.median(times) if times else first,
        "times": times,
        "cpu_seconds": statistics.median(cpu_times) if cpu_times else first_cpu,
        "first_call": first,
        "runs": len(times) if times else 1,
        "cold_only": not times,
        "peak_extra_mb": (peak - baseline) / 1024,
        "peak_exact": exact,
        "rss_mb": baseline / 1024,
        "class": g.index,
        "mask_voxels": int(g.mask.sum()) if g.mask is not None else None,
        **info,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--library", required=True, choices=sorted(LIBRARIES))
    parser.add_argument("--method", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--map-out", required=True)
    args = parser.parse_args()
    try:
        result = measure(args)
    except MemoryError:
        result = {"status": "oom", "error": "MemoryError"}
    except Exception as err:  # report any failure of a peer as data, with its first line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        result = {"status": "error", "error": f"{type(err).__name__}: {message}"[:300]}
        traceback.print_exc(file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
