"""Input gradients only, for the layers after the explained one: hooks for one forward pass.

A CAM needs ``d(score)/d(activation)``, never a parameter gradient, yet autograd's
backward of a layer with parameters may compute both, or take a slow kernel. For one
pass, :func:`input_gradients` hooks every layer with a cheaper rule that is exact to
float rounding: the layer runs without recording a graph and its output gets a graph
node whose backward is that rule.

* Convolutions: a forward convolution (medcam.core.conv_grad).
* PReLU: ``grad`` where the input is positive, ``slope * grad`` elsewhere. PyTorch's own
  backward also reduces the slope's gradient over the whole tensor, ~10x the time of
  the input gradient alone at 96^3 (benchmarks/RESULTS.md). With one slope shared by all
  channels (MONAI's default) the rule is PyTorch's leaky ReLU backward kernel, bit for bit.

Everything else stays with autograd. The user's model is not changed: the hooks go when
the pass ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from medcam.core import conv_grad
from medcam.core.conv_grad import Computed


def prelu_input_gradient(x: Tensor, grad: Tensor, weight: Tensor) -> Tensor:
    """``d(score)/d(x)`` of ``prelu(x, weight)`` from ``grad = d(score)/d(output)``, as PyTorch computes it."""
    if weight.numel() == 1:
        # PyTorch's prelu backward takes ``x > 0 ? grad : weight * grad``; leaky ReLU's is the same
        # product in one pass. A float32 slope survives the round trip through a Python float.
        return torch.ops.aten.leaky_relu_backward(grad, x, weight.item(), False)
    slope = weight.reshape(-1, *([1] * (x.dim() - 2)))
    return torch.where(x > 0, grad, grad * slope)


class _PReLUInputGrad(torch.autograd.Function):
    """Gives PReLU's already computed output a graph node whose backward is :func:`prelu_input_gradient`."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, computed: Computed, module: nn.PReLU) -> Tensor:
        ctx.save_for_backward(inputs)  # an in-place change of the input before the backward is an error
        ctx.weight = module.weight.detach()  # the slope as used now, like autograd's saved tensors
        return computed.output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return prelu_input_gradient(x, grad, ctx.weight), None, None


def _prelu_accepts(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    assert isinstance(module, nn.PReLU)
    x = args[0]
    # under autocast the input may be bfloat16 while the slope stays float32: left to autograd
    return x.dtype == module.weight.dtype and (module.weight.numel() == 1 or x.dim() >= 2)


def _prelu_wrap(module: nn.Module, x: Tensor, output: Tensor, partial: bool) -> Tensor:
    assert isinstance(module, nn.PReLU)
    result: Tensor = _PReLUInputGrad.apply(x, Computed(output), module)
    return result


class _Rule:
    """When a hooked layer's call takes its rule (``accepts``) and how its output is wrapped."""

    def __init__(
        self,
        accepts: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], bool],
        wrap: Callable[[nn.Module, Tensor, Tensor, bool], Tensor],
    ) -> None:
        self.accepts = accepts
        self.wrap = wrap


_CONVOLUTION = _Rule(conv_grad.accepts, conv_grad.wrap)
_PRELU = _Rule(_prelu_accepts, _prelu_wrap)


def rule(module: nn.Module) -> _Rule | None:
    """The input-gradient rule for ``module``, or None when autograd keeps it."""
    if conv_grad.eligible(module):
        return _CONVOLUTION
    if type(module) is nn.PReLU:
        return _PRELU
    return None


class _Hooks:
    """Pre/post forward hooks on the covered layers of one model, for one pass."""

    def __init__(self, keep: Mapping[str, Tensor]) -> None:
        self.rules: dict[int, _Rule] = {}
        self.stack: dict[int, list[bool]] = {}
        self.keep = keep

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else None
        active = (
            isinstance(x, Tensor)
            and torch.is_grad_enabled()
            and x.requires_grad
            and self.rules[id(module)].accepts(module, args, kwargs)
        )
        self.stack.setdefault(id(module), []).append(active)
        if active:
            torch.set_grad_enabled(False)  # the layer itself records nothing

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
        if not self.stack[id(module)].pop():
            return None
        torch.set_grad_enabled(True)
        x = args[0]
        partial = not any(x is kept for kept in self.keep.values())
        return self.rules[id(module)].wrap(module, x, output, partial)


@contextlib.contextmanager
def input_gradients(model: nn.Module, keep: Mapping[str, Tensor] | None = None) -> Iterator[int]:
    """For the passes inside, covered layers get their input gradients by their rules (see the module docstring).

    ``keep``: tensors whose whole gradient is asked for (the captured activations, filled
    as the pass runs). A covered layer may leave out the channels of its input's gradient
    that autograd would drop (a skip concatenation, medcam.core.conv_grad.channel_span)
    unless that input is kept. Yields how many layers are covered. The post hooks run
    before any other forward hook, so a layer hook on a covered layer sees the output
    that carries the graph.
    """
    hooks = _Hooks({} if keep is None else keep)
    handles = []
    try:
        for module in model.modules():
            found = rule(module)
            if found is not None:
                hooks.rules[id(module)] = found
                handles.append(module.register_forward_pre_hook(hooks.before, with_kwargs=True))
                handles.append(module.register_forward_hook(hooks.after, prepend=True))
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()
