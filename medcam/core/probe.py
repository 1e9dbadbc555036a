"""The model as a method sees it: one forward with captured layers, gradients by autograd.

A :class:`Probe` wraps the user's model without changing it. ``capture`` runs ONE
forward pass with hooks on the requested layers and, when asked, ONE
``torch.autograd.grad`` call for the gradients of the target score with respect to
every captured activation: autograd records the graph only from the earliest hooked
layer on, the backward pass stops there and ``param.grad`` is never written.
``forward`` runs the model without hooks or autograd (region methods score many
perturbed inputs with it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medcam.core.fast_conv import onednn_convolutions
from medcam.core.hooks import LayerCapture, LayerError, OutputSelector, select_output
from medcam.core.input_grads import input_gradients
from medcam.core.targets import BoundTarget, Target


@dataclass(frozen=True)
class Capture:
    """What one forward (and backward) pass recorded; every tensor is detached."""

    output: Tensor
    target: BoundTarget
    activations: dict[str, Tensor]
    gradients: dict[str, Tensor] | None


class Probe:
    """Runs ``model`` for the methods; the caller keeps it in eval mode (see ``evaluation_mode``)."""

    def __init__(self, model: nn.Module, output: OutputSelector = None) -> None:
        self.model = model
        self.selector = output
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def forward(self, x: Tensor) -> Tensor:
        """Model output for ``x`` (selected), without hooks and without autograd."""
        with torch.no_grad(), onednn_convolutions(self.model):
            return select_output(self.model(x.to(self.device)), self.selector)

    def capture(
        self,
        x: Tensor,
        layers: Mapping[str, str],
        target: Target | BoundTarget,
        *,
        gradients: bool,
    ) -> Capture:
        """One forward pass capturing ``layers`` (alias -> module path), plus gradients if asked.

        An unbound ``target`` is resolved on this pass's output. If a later in-place
        operation overwrote a captured activation, the pass is repeated with that
        layer's output copied, so values and gradients belong to the layer itself.
        """
        x = x.detach().to(self.device)
        paths = list(dict.fromkeys(layers.values()))
        clone: list[str] = []
        for _ in range(3):
            # autograd starts at the first hooked layer (LayerCapture(start_graph=True))
            hooks = LayerCapture(self.model, paths, clone, start_graph=gradients)
            convs = input_gradients(self.model, keep=hooks.activations) if gradients else contextlib.nullcontext()
            try:
                with torch.set_grad_enabled(False), hooks, convs, onednn_convolutions(self.model):
                    raw = self.model(x)
            except RuntimeError as err:
                # an in-place operation right after a hooked layer touched the leaf made there
                fresh = [name for name in hooks.leaves if name not in clone]
                if not fresh or "leaf Variable" not in str(err):
                    raise
                clone += fresh
                continue
            hooks.check()
            overwritten = [name for name in hooks.overwritten() if name not in clone]
            if not overwritten:
                break
            clone += overwritten
        else:  # pragma: no cover - every layer is copied by the third pass
            raise LayerError(f"layers {clone} keep being modified in place; hook other layers")
        output = select_output(raw, self.selector)
        bound = target if isinstance(target, BoundTarget) else target.bind(output)
        acts = {alias: hooks.activations[path] for alias, path in layers.items()}
        grads: dict[str, Tensor] | None = None
        if gradients:
            score = bound.score(output).sum()
            unique = {path: hooks.activations[path] for path in paths}
            values = torch.autograd.grad(score, list(unique.values()), allow_unused=True)
            by_path = dict(zip(unique, values, strict=True))
            missing = [path for path, g in by_path.items() if g is None]
            if missing:
                raise LayerError(
                    f"the target score does not depend on layer(s) {missing}; choose a layer on the "
                    "path from the input to the explained output"
                )
            grads = {alias: by_path[path].detach() for alias, path in layers.items()}
        return Capture(
            output=output.detach(),
            target=bound,
            activations={alias: a.detach() for alias, a in acts.items()},
            gradients=grads,
        )
