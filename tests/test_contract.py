"""The contract every registered method keeps, checked over registry x {2D, 3D} x batch {1, 2}.

A method joins this suite the moment it is added to ``medcam.methods.registry.METHODS``.
"""

from __future__ import annotations

import pytest
import torch
from nets import hook_count, seeded_input, tiny_classifier, tiny_unet

import medcam
from medcam.methods.registry import METHODS

CLASSIFICATION_ONLY = {"cam"}

CASES = [
    (name, task, dims, batch)
    for name in sorted(METHODS)
    for task in ("classification", "segmentation")
    if not (task == "segmentation" and name in CLASSIFICATION_ONLY)
    for dims in (2, 3)
    for batch in (1, 2)
]


def _setup(task: str, dims: int, batch: int):
    if task == "classification":
        model = tiny_classifier(dims)
        return model, seeded_input(dims, batch), medcam.ClassTarget(1), {"features": "features"}
    model = tiny_unet(dims)
    target = medcam.SegmentationTarget(1, pixels="image")
    return model, seeded_input(dims, batch), target, {"bottleneck": medcam.discover_levels(model)[2].path}


def _mixed_modes(model: torch.nn.Module) -> dict[str, bool]:
    """Put the model in train mode with one submodule in eval mode; return every flag."""
    model.train()
    list(model.modules())[2].eval()
    return {name: m.training for name, m in model.named_modules()}


@pytest.mark.parametrize(("name", "task", "dims", "batch"), CASES, ids=lambda v: str(v))
def test_contract(name: str, task: str, dims: int, batch: int) -> None:
    model, x, target, layers = _setup(task, dims, batch)
    modes = _mixed_modes(model)
    params = list(model.parameters())
    sentinel = torch.full_like(params[0], 7.0)
    params[0].grad = sentinel.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()

    first = medcam.explain(model, x, name, target=target, layers=layers)
    second = medcam.explain(model, x, name, target=target, layers=layers)

    assert set(first.maps) == set(layers)
    for alias, cam in first.maps.items():
        assert cam.shape == (batch, *x.shape[2:]), "one map per sample at input resolution"
        assert cam.dtype == torch.float32
        assert torch.isfinite(cam).all()
        assert cam.min() >= 0 and cam.max() <= 1, "minmax-normalised after ReLU"
        assert cam.flatten(1).amax(dim=1).gt(0).all(), "no silently blank map"
        assert torch.equal(cam, second.maps[alias]), "deterministic"
    assert hook_count(model) == 0, "hooks removed"
    assert {n: m.training for n, m in model.named_modules()} == modes, "training flags restored"
    assert torch.equal(params[0].grad, sentinel), "existing .grad untouched"
    assert all(p.grad is None for p in params[1:]), "no .grad created"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "weights and BN stats unchanged"
    assert torch.equal(x, x_before), "input untouched"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hooks_and_modes_restored_after_an_exception(name: str) -> None:
    model = tiny_classifier(2)
    modes = _mixed_modes(model)
    with pytest.raises(medcam.TargetError, match="out of range"):
        medcam.explain(model, seeded_input(2), name, target=medcam.ClassTarget(9), layers="features")
    assert hook_count(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_when_the_forward_pass_raises() -> None:
    model = tiny_classifier(2)

    def broken(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        raise RuntimeError("boom")

    handle = model.fc.register_forward_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            medcam.explain(model, seeded_input(2), "gradcam", target=0, layers="features")
    finally:
        handle.remove()
    assert hook_count(model) == 0
    assert model.training


def test_no_tensors_leak_over_repeated_calls() -> None:
    import gc
    import warnings

    model = tiny_unet(2)
    x = seeded_input(2, size=32)
    target = medcam.SegmentationTarget(1, pixels="image")

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() touches deprecated lazy torch attributes
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    medcam.explain(model, x, "hirescam", target=target)
    before = live_tensors()
    for _ in range(30):
        medcam.explain(model, x, "hirescam", target=target)
    assert live_tensors() - before <= 5
