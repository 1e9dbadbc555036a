"""Sanity check by cascading randomisation (Adebayo et al. 2018).

An explanation that survives destroying the model's weights does not explain the
model. The check randomises the parameterised modules of a COPY of the model one at
a time, from the output backwards, explains the same target after every step, and
compares each map with the original by Spearman rank correlation and SSIM. A
faithful method's similarity falls as the cascade reaches the explained layer.

The user's model is never touched: the cascade runs on ``copy.deepcopy(model)``.
The target stays fixed (the class and, for segmentation, the pixel set M bound on
the original model's output), as in the paper.

Randomisation (``mode``): ``"gaussian"`` (default) redraws every parameter tensor of
the module from a normal distribution with that tensor's own mean and standard
deviation, so activations keep their scale; ``"reset"`` calls the module's
``reset_parameters()`` (PyTorch's initialisation; batch norm becomes identity).
Buffers (batch-norm running statistics) are kept. Draws are seeded.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode, resolve_layer
from medcam.core.ops import Normalization
from medcam.core.targets import BoundTarget, Target
from medcam.errors import UserError
from medcam.methods.base import CAMMethod
from medcam.metrics.similarity import spearman, ssim

if TYPE_CHECKING:
    from medcam.api import LayerSpec

RandomisationMode = Literal["gaussian", "reset"]


@dataclass(frozen=True)
class SanityResult:
    """Similarity of each cascade step's map with the original map.

    ``steps[s]`` names the module(s) randomised at step s (cumulatively with all
    earlier steps); ``spearman[layer]`` and ``ssim[layer]`` are ``(S, N)``;
    ``maps[layer]`` is ``(S, N, *spatial)`` when kept, and ``original[layer]`` the
    unrandomised map ``(N, *spatial)``.
    """

    steps: tuple[str, ...]
    spearman: Mapping[str, Tensor]
    ssim: Mapping[str, Tensor]
    original: Mapping[str, Tensor]
    maps: Mapping[str, Tensor] | None = None


def parameterised_modules(model: nn.Module, x: Tensor, output: OutputSelector = None) -> list[str]:
    """Paths of modules with parameters of their own, in the order one forward pass runs them."""
    owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []
    handles = []

    def record(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            if name not in order:
                order.append(name)

        return hook

    try:
        for name, module in owners.items():
            handles.append(module.register_forward_hook(record(name)))
        with torch.no_grad(), evaluation_mode(model):
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return order


def randomise(module: nn.Module, generator: torch.Generator, mode: RandomisationMode = "gaussian") -> None:
    """Replace the module's own parameters in place (call it on a copy, never the user's model)."""
    with torch.no_grad():
        if mode == "reset":
            reset = getattr(module, "reset_parameters", None)
            if not callable(reset):
                raise UserError(f"{type(module).__name__} has no reset_parameters(); use mode='gaussian'")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
                reset()
            return
        if mode != "gaussian":
            raise UserError(f"randomisation mode {mode!r} is not known; use 'gaussian' or 'reset'")
        for param in module.parameters(recurse=False):
            values = param.detach().double()
            std = float(values.std()) if values.numel() > 1 else 0.0
            scale = std if std > 0 else max(float(values.abs().mean()), 1e-2)
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.copy_((float(values.mean()) + scale * noise).to(param.dtype))


def _groups(paths: list[str], groups: int | None) -> list[list[str]]:
    if groups is None or groups >= len(paths):
        return [[p] for p in paths]
    if groups < 1:
        raise UserError(f"groups must be at least 1, got {groups}")
    bounds = [round(i * len(paths) / groups) for i in range(groups + 1)]
    return [paths[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def cascading_randomisation(
    model: nn.Module,
    x: Tensor,
    method: str | CAMMethod = "gradcam",
    target: Target | BoundTarget | int | None = None,
    layers: LayerSpec = "auto",
    *,
    modules: Sequence[str] | None = None,
    groups: int | None = None,
    mode: RandomisationMode = "gaussian",
    seed: int = 0,
    keep_maps: bool = False,
    relu: bool = True,
    normalize: Normalization = "minmax",
    output: OutputSelector = None,
    **method_options: Any,
) -> SanityResult:
    """Cascading randomisation of a copy of ``model``, from the output backwards.

    ``modules``: the module paths to randomise, in cascade order (default: every
    module with parameters, in reverse execution order). ``groups``: randomise them
    in that many cumulative steps instead of one module per step (deep networks).
    """
    from medcam.api import explain  # the API imports the methods, which import metrics

    reference = explain(
        model, x, method, target, layers, relu=relu, normalize=normalize, output=output, **method_options
    )
    clone = copy.deepcopy(model)
    if modules is None:
        order = list(reversed(parameterised_modules(clone, x, output)))
    else:
        order = list(modules)
        for path in order:
            resolve_layer(clone, path)
    if not order:
        raise UserError("the model has no modules with parameters to randomise")
    generator = torch.Generator().manual_seed(seed)
    # SSIM's dynamic range: 1 for normalised maps, the original map's span for raw ones
    spans = {a: float(m.max() - m.min()) for a, m in reference.maps.items()}
    ranges = {a: 1.0 if normalize is not None else (s if s > 0 else 1.0) for a, s in spans.items()}
    named = dict(clone.named_modules())
    steps: list[str] = []
    rhos: dict[str, list[Tensor]] = {alias: [] for alias in reference.maps}
    sims: dict[str, list[Tensor]] = {alias: [] for alias in reference.maps}
    kept: dict[str, list[Tensor]] = {alias: [] for alias in reference.maps}
    for group in _groups(order, groups):
        for path in group:
            randomise(named[path], generator, mode)
        steps.append(group[-1] if len(group) == 1 else f"{group[0]} .. {group[-1]}")
        step = explain(
            clone,
            x,
            method,
            reference.target,
            dict(reference.layers),
            relu=relu,
            normalize=normalize,
            output=output,
            **method_options,
        )
        for alias, original in reference.maps.items():
            rhos[alias].append(spearman(original, step.maps[alias]))
            sims[alias].append(ssim(original, step.maps[alias], data_range=ranges[alias]))
            if keep_maps:
                kept[alias].append(step.maps[alias].cpu())
    return SanityResult(
        steps=tuple(steps),
        spearman={a: torch.stack(v) for a, v in rhos.items()},
        ssim={a: torch.stack(v) for a, v in sims.items()},
        original={a: m.cpu() for a, m in reference.maps.items()},
        maps={a: torch.stack(v) for a, v in kept.items()} if keep_maps else None,
    )
