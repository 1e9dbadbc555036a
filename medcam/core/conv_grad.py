"""Input gradients of convolutions computed by forward convolutions, for CAM backward passes.

A CAM needs the gradient of a score with respect to one layer's activations: only input
gradients, never parameter gradients. PyTorch's CPU ``convolution_backward`` for a 3D
convolution records the forward with autograd (which takes a slower kernel than a
no-grad forward) and computes the input gradient with its own backward kernels, which
are slow for the small-channel, full-resolution convolutions at the top of a U-Net
decoder (benchmarks/RESULTS.md). Both are exact to rounding when written as
forward convolutions:

* stride-1 convolution ``y = W * x`` (padding ``p``, dilation ``d``):
  ``dx = W' * dy`` with ``W'`` the kernel flipped in space and its in/out channels
  swapped, padding ``d (k - 1) - p``;
* transposed convolution (any stride ``s``): ``dx = W * dy``, the plain convolution
  with the same stride, padding, dilation and groups.

medcam.core.input_grads installs the hooks for one forward pass: every eligible
convolution whose input requires grad runs without recording a graph and hands back
its output wrapped (:func:`wrap`) in :class:`_ConvInputGrad`, whose backward is that
forward convolution. Other convolutions (strided, circular padding, ...) are left to
autograd. 3D float32
convolutions on the CPU are handed to oneDNN directly (:func:`_convolve`); every
gradient goes back in its input's memory layout, as autograd's would. After a skip
concatenation only the channels whose gradient autograd uses are computed
(:func:`channel_span`), the rest are zeros autograd drops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _padding(module: _ConvNd) -> tuple[int, ...] | None:
    """The per-axis zero padding of ``module``, or None when it is not symmetric zero padding."""
    if module.padding_mode != "zeros":
        return None
    kernel, dilation, padding = module.kernel_size, module.dilation, module.padding
    if padding == "valid":
        return tuple(0 for _ in kernel)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return tuple(t // 2 for t in total) if all(t % 2 == 0 for t in total) else None
    return tuple(int(p) for p in padding)


def eligible(module: nn.Module) -> bool:
    """Whether the input gradient of ``module`` is one forward convolution (see the module docstring)."""
    if not isinstance(module, _ConvNd):
        return False
    if type(module) in _CONV:
        padding = _padding(module)
        if padding is None or any(s != 1 for s in module.stride):
            return False
        reach = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        return all(0 <= p <= r for p, r in zip(padding, reach, strict=True))
    if type(module) in _TRANSPOSED:
        return module.padding_mode == "zeros" and all(
            op < s for op, s in zip(module.output_padding, module.stride, strict=True)
        )
    return False


def input_gradient(
    module: _ConvNd, grad: Tensor, weight: Tensor | None = None, channels: tuple[int, int] | None = None
) -> Tensor:
    """``d(score)/d(input)`` of an :func:`eligible` convolution, from ``grad = d(score)/d(output)``.

    ``weight``: the kernel the forward pass used (default: the module's current one).
    ``channels``: only the input channels ``[start, stop)`` (ungrouped convolutions).
    """
    dims = grad.dim() - 2
    weight = (module.weight if weight is None else weight).detach().to(grad.dtype)
    groups = module.groups
    rows = slice(None) if channels is None else slice(*channels)
    assert channels is None or groups == 1
    if type(module) in _TRANSPOSED:
        return _convolve(grad, weight[rows], module.stride, module.padding, module.dilation, groups)
    # (out, in/g, *k) -> (in, out/g, *k): swap channels within each group, flip the kernel in space
    out_channels, in_per_group = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    swapped = (
        weight.reshape(groups, out_channels // groups, in_per_group, *kernel)
        .transpose(1, 2)
        .reshape(in_per_group * groups, out_channels // groups, *kernel)
        .flip(tuple(range(2, 2 + dims)))
    )
    padding = _padding(module)
    assert padding is not None
    reach = tuple(d * (k - 1) - p for d, k, p in zip(module.dilation, module.kernel_size, padding, strict=True))
    return _convolve(grad, swapped[rows], (1,) * dims, reach, module.dilation, groups)


def channel_span(x: Tensor) -> tuple[int, int] | None:
    """The channels of ``x`` whose gradient autograd can use, when that is fewer than all; else None.

    ``x`` a concatenation along channels of which only some inputs require grad: a
    U-Net's skip connection, encoder features computed before the explained layer
    (no grad) joined to the decoder's. Autograd drops the gradient of inputs that do not
    require grad, so only the channels of those that do are needed. Recognised when the
    inputs that require grad form one block and the others all sit on one side of it
    (their channel count then follows from the total); anything else gives None.
    """
    node = x.grad_fn
    if node is None or node.name() != "CatBackward0":
        return None
    try:
        dim = node._saved_dim  # type: ignore[attr-defined]
        shapes = [None if fn is None else list(fn._input_metadata[nr].shape) for fn, nr in node.next_functions]
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return None  # another PyTorch's autograd internals: all channels
    if dim not in (1, 1 - x.dim()):
        return None
    needed = [i for i, shape in enumerate(shapes) if shape is not None]
    if not needed or len(needed) == len(shapes) or needed != list(range(needed[0], needed[-1] + 1)):
        return None
    if needed[0] > 0 and needed[-1] < len(shapes) - 1:
        return None  # inputs without grad on both sides: where the block starts is unknown
    known = [shapes[i] for i in needed]
    if any(shape is None or len(shape) != x.dim() for shape in known):
        return None
    width = sum(int(shape[1]) for shape in known if shape is not None)
    channels = x.shape[1]
    if not 0 < width < channels:
        return None
    return (0, width) if needed[0] == 0 else (channels - width, channels)


def _on_onednn(x: Tensor) -> bool:
    """Whether the convolution of ``x`` is handed to oneDNN directly (see :func:`_convolve`)."""
    return x.dim() == 5 and x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


# at most this many channels in and out: oneDNN is faster in channels-last layout, copies included
_FEW_CHANNELS = 4


def _convolve(
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
    groups: int,
    bias: Tensor | None = None,
) -> Tensor:
    """The forward convolution ``weight * x`` (+ ``bias``).

    A 3D float32 convolution on the CPU goes to oneDNN directly. For a batch of one at
    low resolution PyTorch picks its im2col kernel instead, 5-8x slower for the
    decoder's 32 -> 32 channel convolutions at 24^3; and with few channels oneDNN
    itself is ~2x faster in channels-last layout, copies included (the 4 -> 4 channel
    convolution at 96^3). Measured in benchmarks/RESULTS.md. Same sums, other order:
    equal to rounding.
    """
    if _on_onednn(x) and not isinstance(padding, str):
        if max(x.shape[1], weight.shape[0]) <= _FEW_CHANNELS:
            x = x.contiguous(memory_format=torch.channels_last_3d)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        else:
            x, weight = x.contiguous(), weight.contiguous()
        return torch.mkldnn_convolution(x, weight, bias, list(padding), list(stride), list(dilation), groups)
    conv = _FORWARD[x.dim() - 2]
    return conv(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


class Computed:
    """A layer's output, handed to a custom Function outside its tensor inputs.

    Passed as a tensor input, the output would come back as a view of an input, and a
    later in-place operation (``ReLU(inplace=True)``) on a custom Function's view is an error.
    """

    def __init__(self, output: Tensor) -> None:
        self.output = output


class _ConvInputGrad(torch.autograd.Function):
    """Gives the already computed output a graph node whose backward is :func:`input_gradient`."""

    @staticmethod
    def forward(
        ctx: Any, inputs: Tensor, computed: Computed, module: _ConvNd, channels: tuple[int, int] | None
    ) -> Tensor:
        ctx.module = module
        # the kernel as used now: a model may swap its weights before the backward pass
        # (nnU-Net folds loaded one at a time), as autograd's own saved tensors allow
        ctx.weight = module.weight.detach()
        ctx.input_dtype = inputs.dtype
        ctx.input_shape = inputs.shape
        ctx.layout = _layout(inputs)
        ctx.channels = channels
        return computed.output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        found = input_gradient(ctx.module, grad, ctx.weight, ctx.channels)
        # in the input's layout, as autograd's own: a channels-last gradient of a batch of one
        # makes instance norm's backward wrong (torch 2.14), see tests/test_conv_grad.py
        if ctx.channels is None:
            return found.to(ctx.input_dtype, memory_format=ctx.layout), None, None, None
        start, stop = ctx.channels
        # zeros where autograd drops the gradient (channel_span); one pass over the tensor
        whole = torch.empty(ctx.input_shape, dtype=ctx.input_dtype, device=grad.device, memory_format=ctx.layout)
        whole[:, :start].zero_()
        whole[:, stop:].zero_()
        whole[:, start:stop].copy_(found)
        return whole, None, None, None


def _layout(x: Tensor) -> torch.memory_format:
    """The memory format autograd gives the gradient of ``x``: channels-last only for a channels-last ``x``."""
    if x.dim() in (4, 5) and not x.is_contiguous():
        layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if x.is_contiguous(memory_format=layout):
            return layout
    return torch.contiguous_format


def accepts(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call of an :func:`eligible` convolution can take the rule.

    A transposed convolution given ``output_size`` may pad its output beyond its stride.
    """
    return len(args) == 1 and kwargs.get("output_size") is None


def wrap(module: nn.Module, x: Tensor, output: Tensor, partial: bool) -> Tensor:
    """``output`` (computed without a graph) with a graph node to ``x`` whose backward is :func:`input_gradient`.

    ``partial``: nothing but autograd reads the gradient of ``x``, so the channels it drops
    (:func:`channel_span`) may be left out.
    """
    assert isinstance(module, _ConvNd)
    channels = channel_span(x) if partial and module.groups == 1 else None
    result: Tensor = _ConvInputGrad.apply(x, Computed(output), module, channels)
    return result
