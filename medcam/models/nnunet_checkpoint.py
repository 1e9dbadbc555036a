"""Reading nnU-Net v2 checkpoints without unpickling code.

An nnU-Net checkpoint (``fold_K/checkpoint_final.pth``) is a pickled dict whose training
log holds numpy scalars, so ``torch.load(weights_only=True)`` alone refuses it. It is
read with torch's restricted unpickler and an allow-list of exactly the numpy globals
that rebuild a scalar from its dtype and raw bytes (:data:`NUMPY_SCALAR_GLOBALS`); any
other global (a function, a class with a ``__reduce__``) is still refused before it runs.
Only ``network_weights`` and three plain facts (trainer name, configuration, mirroring
axes) are kept.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medcam.models.checkpoint import CheckpointError, check_container


class NNUNetError(CheckpointError):
    """An nnU-Net folder is incomplete, of an unsupported kind, or its checkpoint is unsafe."""


def _numpy_scalar_globals() -> list[Any]:
    """numpy's scalar reconstructor and dtype classes, under the names numpy 1.x and 2.x pickle them."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = [
        np.dtype,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
    ]
    # numpy >= 1.25 may pickle a dtype by its class (numpy.dtypes.Float64DType, ...)
    for name in (
        "BoolDType",
        "Float16DType",
        "Float32DType",
        "Float64DType",
        "Int8DType",
        "Int16DType",
        "Int32DType",
        "Int64DType",
        "UInt8DType",
        "UInt16DType",
        "UInt32DType",
        "UInt64DType",
    ):
        dtype_class = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()


@contextlib.contextmanager
def _numpy_scalars_allowed() -> Iterator[None]:
    with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
        yield


@dataclass(frozen=True)
class NNUNetCheckpoint:
    """What medcam keeps of one fold's checkpoint: the weights and three plain facts."""

    weights: dict[str, Tensor]
    trainer: str | None
    configuration: str | None
    mirror_axes: tuple[int, ...] | None


def read_nnunet_checkpoint(path: str | Path) -> NNUNetCheckpoint:
    """The network weights of an nnU-Net ``checkpoint_*.pth``, read with the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise NNUNetError(f"nnU-Net checkpoint {path} does not exist; is training of this fold finished?")
    check_container(path)  # a compressed zip or a non-PyTorch file is refused before torch.load reads it
    try:
        with _numpy_scalars_allowed():
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it needs {unsafe.group(1)})" if unsafe else ""
        raise NNUNetError(
            f"{path} holds pickled Python objects beyond tensors and numpy scalars{what}, which medcam refuses to "
            "load (they can run code); use the checkpoint nnUNetv2_train wrote"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise NNUNetError(f"{path} is not a readable checkpoint ({err}); is the file truncated?") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), dict):
        raise NNUNetError(
            f"{path} is not an nnU-Net v2 checkpoint (no 'network_weights'); pass the trained-model folder"
        )
    weights = payload["network_weights"]
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        raise NNUNetError(f"{path}: 'network_weights' is not a state dict of tensors")
    init_args = payload.get("init_args")
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    configuration = configuration if isinstance(configuration, str) else None
    trainer = payload.get("trainer_name") if isinstance(payload.get("trainer_name"), str) else None
    axes = payload.get("inference_allowed_mirroring_axes")
    mirror = tuple(int(a) for a in axes) if isinstance(axes, (tuple, list)) else None
    # DDP / torch.compile prefixes, as nnU-Net's own loader strips them
    clean = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in weights.items()}
    return NNUNetCheckpoint(clean, trainer, configuration, mirror)
