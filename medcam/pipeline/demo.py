"""The demo: a KiTS-like phantom explained with the shipped demo model, checked against its truth.

:func:`run_demo` writes ``<out>/phantom/case_00000/{imaging,segmentation}.nii.gz``
(:func:`medcam.data.synthetic.write_kits_case`, KiTS23's layout), runs
:func:`medcam.pipeline.explain_case` on it with the demo checkpoint
(:data:`~medcam.models.checkpoint.DEMO_CHECKPOINT`), exactly as ``medcam explain --volume``
would, into ``<out>/explanation/``, and reads the written files back to score them: the
Dice of the predicted labels against the phantom's ground truth, and the heatmap's mean
inside and outside the true tumour. ``medcam demo`` prints the result.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEMO_CLASS = "tumor"


@dataclass(frozen=True)
class DemoReport:
    """Where the demo wrote its files and how the explanation scores against the phantom's truth.

    ``predicted_ml`` / ``truth_ml``: volume of each structure (ml) in the prediction and in
    the phantom's segmentation; ``dice``: per label (NaN when absent from both);
    ``cam_inside`` / ``cam_outside``: mean of ``heatmap.nii.gz`` inside and outside the
    true tumour.
    """

    out: Path
    case: Path
    explanation: Path
    class_name: str
    method: str
    predicted_ml: dict[str, float]
    truth_ml: dict[str, float]
    dice: dict[str, float]
    cam_inside: float
    cam_outside: float
    seconds: float

    @property
    def cam_ratio(self) -> float:
        """How many times higher the map is inside the tumour than outside it."""
        return self.cam_inside / self.cam_outside if self.cam_outside > 0 else math.inf


def run_demo(
    out: str | Path = "demo_output",
    *,
    overwrite: bool = False,
    seed: int = 0,
    method: str = "hirescam",
    device: str = "auto",
    progress: bool = False,
) -> DemoReport:
    """Write a phantom case, explain its tumour with the demo model, and score the result.

    ``seed`` chooses the phantom (seed 0 is not one of the demo model's training cases).
    An existing ``out`` is refused unless ``overwrite``; it is replaced only when the new
    demo is complete, and a failed run leaves nothing behind.
    """
    from medcam.data.synthetic import write_kits_case
    from medcam.models.checkpoint import DEMO_CHECKPOINT
    from medcam.pipeline import explain_case
    from medcam.review.folders import check_output, output_path, write_marker

    start = time.perf_counter()
    out = output_path(out)
    check_output(out, overwrite=overwrite)
    previous = _move_aside(out) if out.exists() else None
    try:
        out.mkdir(parents=True)
        write_marker(out)  # a medcam output: a later --overwrite may replace it
        # written in place (not renamed afterwards): the Slicer scene refers to the phantom by its path
        case = write_kits_case(out / "phantom", 0, seed=seed)
        explanation = explain_case(
            case / "imaging.nii.gz",
            out / "explanation",
            class_name=DEMO_CLASS,
            model=DEMO_CHECKPOINT,
            method=method,
            device=device,
            progress=progress,
        )
        report = _score(out, case, explanation, method, time.perf_counter() - start)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if previous is not None:
            previous.rename(out)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    logger.info("demo written to %s", out)
    return report


def _move_aside(out: Path) -> Path:
    """Rename an existing ``out`` to a hidden sibling (restored if the new demo fails)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    return old


def _nifti(path: Path) -> Any:
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):  # pragma: no cover - the demo writes NIfTI-1
        raise TypeError(f"{path} is a {type(img).__name__}, not NIfTI-1")
    return img


def _score(out: Path, case: Path, explanation: Path, method: str, seconds: float) -> DemoReport:
    import torch

    from medcam.metrics.dice import label_dice
    from medcam.models.checkpoint import DEMO_CHECKPOINT, read_checkpoint

    labels = {name: value for name, value in read_checkpoint(DEMO_CHECKPOINT)[0].labels.items() if value != 0}
    truth_image = _nifti(case / "segmentation.nii.gz")
    truth = np.asarray(truth_image.dataobj).astype(np.int64)
    prediction = np.asarray(_nifti(explanation / "prediction.nii.gz").dataobj).astype(np.int64)
    heatmap = np.asarray(_nifti(explanation / "heatmap.nii.gz").dataobj, dtype=np.float32)
    voxel_ml = float(np.prod(truth_image.header.get_zooms()[:3])) / 1000.0
    tumour = truth == labels[DEMO_CLASS]
    return DemoReport(
        out=out,
        case=case,
        explanation=explanation,
        class_name=DEMO_CLASS,
        method=method,
        predicted_ml={name: float((prediction == v).sum()) * voxel_ml for name, v in labels.items()},
        truth_ml={name: float((truth == v).sum()) * voxel_ml for name, v in labels.items()},
        dice=label_dice(torch.from_numpy(prediction), torch.from_numpy(truth), labels),
        cam_inside=float(heatmap[tumour].mean()) if tumour.any() else math.nan,
        cam_outside=float(heatmap[~tumour].mean()),
        seconds=seconds,
    )
