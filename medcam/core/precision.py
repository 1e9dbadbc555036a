"""Numeric precision of forward (and backward) passes: ``fp32``, ``bf16`` or ``auto``; the one precision grammar.

``bf16`` runs the model under autocast with bfloat16: on CPU where oneDNN supports
bfloat16 (AVX-512 BF16 / AMX: the matrix units do the work, about 1.7x faster than
float32 on a 3D U-Net here), on CUDA with bfloat16 (float16 on GPUs without it).
Elsewhere it falls back to float32 and says so. Maps, weights and stitched buffers stay
float32: only the network runs in bfloat16.

An explanation has two stages, the prediction (which fixes the labels and M) and the
CAM (activations and gradients). ``fp32`` and ``bf16`` apply to both; ``auto`` takes
bfloat16 only where it was measured safe: the prediction, where the hardware has native
bfloat16 (on the demo model and held-out phantoms 99.99 % of labels agree with float32),
and float32 for the CAM, whose gradient-times-activation maps lose rank order in
bfloat16's 8-bit mantissa (Spearman 0.98 against float32; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from medcam.errors import UserError

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r} is not known; use one of {PRECISIONS}")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (oneDNN on CPU, bf16 units on CUDA)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def stages(device: torch.device, precision: str) -> tuple[str, str]:
    """The precision of the prediction and of the CAM for ``precision`` on ``device``."""
    check_precision(precision)
    if precision == "auto":
        return ("bf16" if native_bf16(device) else "fp32"), "fp32"
    return precision, precision


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of one stage in ``precision`` (``fp32``/``bf16``) on ``device``; ``None``: float32."""
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if native_bf16(device):
        return torch.bfloat16
    logger.warning("precision='bf16' is not supported on this %s; the model runs in float32", device.type)
    return None


def resolved(device: torch.device, precision: str) -> dict[str, str]:
    """What ``precision`` means on ``device``, per stage: what ``summary.json`` records."""
    names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    prediction, cam = stages(device, precision)
    return {
        "requested": precision,
        "prediction": names[autocast_dtype(device, prediction)],
        "cam": names[autocast_dtype(device, cam)],
    }


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Run the enclosed model calls in ``precision`` on ``device`` (no-op for float32)."""
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield
