"""medcam.core.fast_conv: oneDNN 3D convolutions for medcam's passes, equal to PyTorch's within rounding."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from medcam.core import conv_grad
from medcam.core.fast_conv import onednn_convolutions
from medcam.core.probe import Probe
from medcam.core.targets import SegmentationTarget


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records every convolution handed to the oneDNN path (input shapes)."""
    seen: list[tuple[int, ...]] = []
    original = conv_grad._convolve

    def counted(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        seen.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(conv_grad, "_convolve", counted)
    return seen


CONFIGS = [
    # in, out, kernel, stride, padding, dilation, groups, bias, batch, size
    (3, 4, 3, 1, 1, 1, 1, True, 1, 10),  # few channels: channels-last oneDNN
    (4, 4, 3, 1, 1, 1, 1, False, 2, 9),
    (8, 6, 3, 1, 1, 1, 1, True, 1, 10),  # plain layout
    (8, 8, 3, 2, 1, 1, 1, True, 1, 11),  # strided
    (6, 9, 3, 1, 2, 2, 3, True, 1, 12),  # dilated, grouped
    (4, 4, 3, 1, 1, 1, 4, False, 1, 8),  # depthwise, few channels
    (5, 7, (1, 3, 2), (1, 2, 1), (0, 2, 1), (1, 1, 2), 1, True, 3, 9),  # anisotropic
    (8, 16, 1, 1, 0, 1, 1, True, 1, 6),  # 1x1x1
]


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_pytorch_and_takes_the_fast_path(config: tuple[Any, ...], calls: list[tuple[int, ...]]) -> None:
    cin, cout, kernel, stride, padding, dilation, groups, bias, batch, size = config
    torch.manual_seed(0)
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    x = torch.randn(batch, cin, size, size + 1, size + 2)
    with torch.no_grad():
        expected = conv(x)
        with onednn_convolutions(conv) as covered:
            found = conv(x)
    assert covered == 1 and len(calls) == 1
    assert found.shape == expected.shape and found.is_contiguous()
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_input_keeps_its_layout(calls: list[tuple[int, ...]]) -> None:
    conv = nn.Conv3d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = conv(x)
        with onednn_convolutions(conv):
            found = conv(x)
    assert calls and found.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


class _Scaled(nn.Conv3d):
    """A subclass with a forward of its own: never replaced."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


def _fallbacks() -> list[tuple[str, nn.Module, Tensor, Any]]:
    x = torch.randn(1, 2, 6, 6, 6)
    return [
        ("padding string", nn.Conv3d(2, 3, 3, padding="same"), x, torch.no_grad),
        ("reflect padding", nn.Conv3d(2, 3, 3, padding=1, padding_mode="reflect"), x, torch.no_grad),
        ("float64", nn.Conv3d(2, 3, 3).double(), x.double(), torch.no_grad),
        ("unbatched", nn.Conv3d(2, 3, 3), x[0], torch.no_grad),
        ("autocast", nn.Conv3d(2, 3, 3), x, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        ("autograd on", nn.Conv3d(2, 3, 3), x, torch.enable_grad),
        ("subclass", _Scaled(2, 3, 3), x, torch.no_grad),
        ("transposed", nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=1), x, torch.no_grad),
        ("2d", nn.Conv2d(2, 3, 3), x[:, :, 0], torch.no_grad),
    ]


@pytest.mark.parametrize("case", _fallbacks(), ids=lambda case: case[0])
def test_falls_back_to_pytorch(case: tuple[str, nn.Module, Tensor, Any], calls: list[tuple[int, ...]]) -> None:
    _, module, x, mode = case
    torch.manual_seed(1)
    with mode():
        expected = module(x)
        with onednn_convolutions(module):
            found = module(x)
    assert calls == []
    assert found.dtype == expected.dtype
    assert torch.equal(found, expected)  # the same PyTorch call: bit for bit
    assert found.requires_grad == expected.requires_grad


def _net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1),
        nn.InstanceNorm3d(8),
        nn.PReLU(),
        nn.Conv3d(8, 8, 3, stride=2, padding=1),
        nn.PReLU(),
        nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm3d(4),
        nn.PReLU(),
        nn.Conv3d(4, 4, 3, padding=1),
        nn.InstanceNorm3d(4),
        nn.Conv3d(4, 3, 1),
    ).eval()


def _state(model: nn.Module) -> list[Any]:
    return [
        (name, sorted(vars(m)), len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()
    ]


def test_model_unchanged_after_the_block_even_on_error() -> None:
    model = _net()
    before, weights = _state(model), copy.deepcopy(model.state_dict())
    with onednn_convolutions(model) as covered:
        assert covered == 4
        with onednn_convolutions(model) as nested:  # already covered: left to the outer block
            assert nested == 0
        assert all("forward" in vars(m) for m in model.modules() if type(m) is nn.Conv3d)
    assert _state(model) == before
    with pytest.raises(RuntimeError, match="boom"), onednn_convolutions(model):
        raise RuntimeError("boom")
    assert _state(model) == before
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name])


def test_probe_gradients_match_autograd(calls: list[tuple[int, ...]]) -> None:
    """The fast forward composes with the input-gradient rules: the same activations and gradients as autograd."""
    model = _net()
    x = torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(3))
    layer = "3"  # the strided convolution: the decoder after it runs under the input-gradient rules
    target = SegmentationTarget(1, pixels="image")
    capture = Probe(model).capture(x, {"a": layer}, target, gradients=True)
    # the first convolution (no grad) and the decoder's stride-1 ones (under the input-gradient rule)
    assert (1, 1, 12, 12, 12) in calls and (1, 4, 12, 12, 12) in calls
    kept: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: Any, output: Tensor) -> None:
        kept["a"] = output

    handle = model[3].register_forward_hook(keep)
    try:
        output = model(x)
    finally:
        handle.remove()
    score = target.bind(output).score(output).sum()
    (reference,) = torch.autograd.grad(score, [kept["a"]])
    torch.testing.assert_close(capture.activations["a"], kept["a"].detach(), rtol=1e-5, atol=1e-5)
    assert capture.gradients is not None
    torch.testing.assert_close(capture.gradients["a"], reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(Probe(model).forward(x), output.detach(), rtol=1e-5, atol=1e-5)


def test_forward_of_a_covered_layer_is_per_instance() -> None:
    """Other instances of the class and the class itself keep PyTorch's forward during the block."""
    model, other, original = _net(), nn.Conv3d(1, 1, 1), nn.Conv3d.forward
    with onednn_convolutions(model):
        assert nn.Conv3d.forward is original
        assert "forward" not in vars(other)


def test_a_deep_copy_made_inside_computes_with_its_own_weights() -> None:
    model = _net()
    x = torch.randn(1, 1, 8, 8, 8)
    with onednn_convolutions(model):
        clone = copy.deepcopy(model)
    reference = _net()
    with torch.no_grad():
        clone[0].weight.mul_(2)
        reference.load_state_dict(clone.state_dict())
        torch.testing.assert_close(clone(x), reference(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(clone(x), model(x))
