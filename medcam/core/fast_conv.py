"""3D float32 CPU convolutions by oneDNN for medcam's own passes, without changing the model.

For a batch of one PyTorch's CPU ``Conv3d`` picks its im2col kernel (``slow_conv3d``)
for most of a 3D U-Net's convolutions, and oneDNN's plain layout for the few-channel
full-resolution ones; :func:`medcam.core.conv_grad._convolve` computes the same sums
with oneDNN in the faster layout. The MONAI UNet of benchmarks/bench_core.py at 96^3,
batch 1, one thread: forward ~0.7x PyTorch's (benchmarks/RESULTS.md, issue #18). Equal
to float rounding (another summation order).

:func:`onednn_convolutions` gives every plain ``nn.Conv3d`` of the model a forward of
its own for the duration of the block (an instance attribute, deleted in ``finally``).
A call takes the oneDNN path only when nothing is lost: autograd off (a no-grad pass,
or a layer under medcam.core.input_grads' rule, whose pre-hook turns it off), no
autocast, a plain float32 5D CPU tensor, zero padding given as numbers. Anything else
runs ``nn.Conv3d.forward`` itself. Transposed convolutions are left alone: PyTorch
already hands them to oneDNN. Outputs keep the input's memory layout: a channels-last
tensor reaching instance norm's backward at batch one is wrong in torch 2.14
(tests/test_conv_grad.py).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medcam.core import conv_grad


def _fast(module: nn.Conv3d, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call of ``module`` can go to oneDNN (see the module docstring)."""
    if kwargs or len(args) != 1 or type(args[0]) is not Tensor:
        return False
    x = args[0]
    weight, bias = module.weight, module.bias
    return (
        not torch.is_grad_enabled()
        and not torch.is_autocast_enabled(x.device.type)
        and conv_grad._on_onednn(x)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and (bias is None or bias.dtype == torch.float32)
    )


def _forward(module: nn.Conv3d, *args: Any, **kwargs: Any) -> Tensor:
    if not _fast(module, args, kwargs):
        result: Tensor = nn.Conv3d.forward(module, *args, **kwargs)
        return result
    x = args[0]
    padding = tuple(int(p) for p in module.padding)
    y = conv_grad._convolve(x, module.weight, module.stride, padding, module.dilation, module.groups, module.bias)
    return y.contiguous(memory_format=conv_grad._layout(x))


@contextlib.contextmanager
def onednn_convolutions(model: nn.Module) -> Iterator[int]:
    """Inside, the model's plain ``nn.Conv3d`` layers compute by oneDNN where exact; yields how many are covered.

    Subclasses (which may change the forward) and layers with a forward of their own are
    left alone, so nesting is harmless. The model is unchanged after the block.
    """
    covered: list[nn.Module] = []
    try:
        for module in model.modules():
            if type(module) is nn.Conv3d and "forward" not in module.__dict__:
                # what ``module.forward = ...`` stores; a bound method (not a closure), so that a
                # deep copy made meanwhile calls its own weights
                module.__dict__["forward"] = types.MethodType(_forward, module)
                covered.append(module)
        yield len(covered)
    finally:
        for module in covered:
            del module.__dict__["forward"]
