"""Input-gradient rules of medcam.core.input_grads (PReLU here; convolutions in test_conv_grad.py) equal autograd's.

The reference is plain autograd on the same module, no hooks. A shared PReLU slope
takes PyTorch's leaky ReLU backward kernel, the same product per element: equal bit
for bit. Per-channel slopes and whole networks: 1e-5 of the gradient's largest
magnitude in float32 (other summation orders upstream).
"""

from __future__ import annotations

import torch
from torch import nn

from medcam.core.input_grads import input_gradients, rule


def _reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(net(x).square().sum(), x)[0]


def _fast(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    x = x.detach().requires_grad_(True)
    with input_gradients(net) as covered:
        out = net(x)
    return torch.autograd.grad(out.square().sum(), x)[0], out, covered


def _with_zeros(shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(shape)
    x.view(-1)[::7] = 0.0  # the kink: x = 0 takes the slope, as in PyTorch
    return x


def test_a_shared_prelu_slope_gives_autograd_gradient_bit_for_bit_by_its_own_rule() -> None:
    torch.manual_seed(0)
    prelu = nn.PReLU()
    with torch.no_grad():
        prelu.weight.fill_(0.2537)
    x = _with_zeros((2, 3, 5, 6, 7))
    expected = _reference(prelu, x)
    found, out, covered = _fast(prelu, x)
    assert covered == 1
    assert type(out.grad_fn).__name__ == "_PReLUInputGradBackward"  # the rule was taken
    assert torch.equal(found, expected)
    assert prelu.weight.grad is None


def test_per_channel_prelu_slopes_match_autograd() -> None:
    torch.manual_seed(1)
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.1, -0.3, 0.0, 2.0]))
    x = _with_zeros((1, 4, 9, 8))
    expected = _reference(prelu, x)
    found, out, _ = _fast(prelu, x)
    assert type(out.grad_fn).__name__ == "_PReLUInputGradBackward"
    assert (found - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_a_prelu_before_the_graph_starts_or_under_autocast_is_left_to_autograd() -> None:
    prelu = nn.PReLU()
    with input_gradients(prelu) as covered:
        out = prelu(torch.randn(1, 2, 4, 4))  # the input does not require grad
    assert covered == 1 and type(out.grad_fn).__name__ == "PreluKernelBackward0"
    # under bfloat16 autocast the input is bfloat16 and the slope float32: autograd's own backward
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), prelu)
    x = torch.randn(1, 2, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _reference(net, x)
        found, out, covered = _fast(net, x)
    assert covered == 2 and type(out.grad_fn).__name__ == "PreluKernelBackward0"
    assert (found.float() - expected.float()).abs().max() <= 2e-2 * expected.float().abs().max()
    assert rule(nn.LeakyReLU()) is None and rule(nn.ReLU()) is None  # their backward is already input-only


def test_a_monai_unet_decoder_with_prelu_and_instance_norm_matches_autograd() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(2)
    net = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    expected = _reference(net, x)
    found, _, covered = _fast(net, x)
    prelus = sum(type(m) is nn.PReLU for m in net.modules())
    assert prelus > 0 and covered > prelus
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert all(p.grad is None for p in net.parameters())
