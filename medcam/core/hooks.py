"""Capturing activations of named layers for exactly one forward pass.

Hooks live for one call: :class:`LayerCapture` registers forward hooks on entry and
removes every handle in ``finally``. Gradients are never taken here; the engine asks
``torch.autograd.grad`` for them on the captured tensors, so ``param.grad`` is never
touched and the backward pass stops at the earliest hooked layer.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from medcam.errors import UserError

OutputSelector = Callable[[Any], Tensor] | int | str | None


class LayerError(UserError):
    """A layer name does not exist or cannot be hooked; the message lists valid names."""


SCRIPTED_FIX = (
    "pass the Python nn.Module instead (build the network in Python and load its state_dict), "
    "a medcam checkpoint, an nnU-Net trained-model folder or a MONAI bundle folder"
)


def refuse_scripted(model: object) -> None:
    """TorchScript (scripted or traced) modules cannot run Python forward hooks: say so in one line."""
    if isinstance(model, torch.jit.ScriptModule):
        kind = "traced" if isinstance(model, torch.jit.TopLevelTracedModule) else "scripted"
        raise LayerError(f"the model is a {kind} TorchScript module, on which layer hooks cannot run; {SCRIPTED_FIX}")


def is_torchscript_file(path: Any) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with code/ and constants.pkl."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at the dotted path ``name``, or an error naming the closest paths."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"for example: {', '.join(names[-5:])}"
    raise LayerError(f"layer {name!r} does not exist in {type(model).__name__} ({hint})")


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode and restore every module's own ``training`` flag afterwards.

    Explanations describe inference behaviour: dropout off, batch-norm on its running
    statistics (which also makes batch size 1 safe and leaves those statistics untouched).
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def select_output(output: Any, selector: OutputSelector = None) -> Tensor:
    """Pick the tensor to explain from a model's output (tensor, tuple/list or dict).

    ``None`` takes a tensor as is, the first element of a tuple/list (deep-supervision
    heads put the full-resolution output first) or the ``"out"`` entry of a dict
    (torchvision segmentation models). An int or str indexes explicitly; a callable
    receives the raw output.
    """
    if callable(selector):
        chosen = selector(output)
    elif selector is not None:
        try:
            chosen = output[selector]
        except (KeyError, IndexError, TypeError) as err:
            raise UserError(f"output selector {selector!r} does not apply to a {type(output).__name__} output") from err
    elif isinstance(output, Tensor):
        chosen = output
    elif isinstance(output, (tuple, list)) and output:
        chosen = output[0]
    elif isinstance(output, Mapping):
        if "out" not in output:
            raise UserError(f"the model returns a dict with keys {list(output)}; pass output=<key> to choose one")
        chosen = output["out"]
    else:
        raise UserError(f"cannot find a tensor in a {type(output).__name__} model output; pass output=<selector>")
    if not isinstance(chosen, Tensor):
        raise UserError(f"the selected model output is a {type(chosen).__name__}, not a tensor")
    return chosen


class LayerCapture:
    """Context manager that records the outputs of named layers during one forward pass.

    ``clone`` lists layers whose output is copied before the rest of the network sees
    it: needed when a later in-place operation (``ReLU(inplace=True)``) would overwrite
    the captured values. The engine detects that case and asks for it.

    ``start_graph``: the caller runs the forward pass with autograd off; the first
    hooked layer to run switches autograd on for the rest of the pass, and every hooked
    output that does not require grad by then (the first one, or a branch with frozen
    weights) becomes a leaf that does. Nothing computed before the first hooked layer
    can depend on a hooked activation, so gradients are exact while that part of the
    network records no graph (less time, much less memory).
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[str], clone: Sequence[str] = (), *, start_graph: bool = False
    ) -> None:
        refuse_scripted(model)
        self.modules = {name: resolve_layer(model, name) for name in layers}
        self.clone = set(clone)
        self.start_graph = start_graph
        self.leaves: list[str] = []
        self.activations: dict[str, Tensor] = {}
        self.versions: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], Tensor | None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
            self._calls[name] = self._calls.get(name, 0) + 1
            if not isinstance(output, Tensor):
                raise LayerError(
                    f"layer {name!r} returns a {type(output).__name__}, not a tensor; hook one of its "
                    "submodules that returns a feature map"
                )
            replacement = None
            if self.start_graph:
                torch.set_grad_enabled(True)  # the caller's context restores the mode on exit
                if not output.requires_grad:
                    self.leaves.append(name)
                    output = replacement = output.detach().requires_grad_(True)
            self.activations[name] = output
            self.versions[name] = output._version
            if name in self.clone:
                return output.clone()
            return replacement

        return record

    def __enter__(self) -> LayerCapture:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check(self) -> None:
        """Raise if a layer did not run, or ran more than once, in the forward pass."""
        for name in self.modules:
            calls = self._calls.get(name, 0)
            if calls == 0:
                raise LayerError(f"layer {name!r} did not run during the forward pass; choose a layer the model uses")
            if calls > 1:
                raise LayerError(
                    f"layer {name!r} ran {calls} times in one forward pass (a shared module), so its "
                    "activation is ambiguous; hook a module that runs once"
                )

    def overwritten(self) -> list[str]:
        """Layers whose captured output was modified in place after capture."""
        return [name for name, t in self.activations.items() if t._version != self.versions[name]]
