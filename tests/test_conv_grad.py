"""Input gradients of convolutions by forward convolutions (medcam.core.conv_grad) equal autograd's.

The reference is PyTorch's own ``convolution_backward`` (plain autograd on the same
module, no hooks). Tolerance: 1e-5 of the gradient's largest magnitude in float32 (the
two sums differ only in rounding order).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcam.core.conv_grad import eligible
from medcam.core.input_grads import input_gradients
from medcam.core.probe import Probe
from medcam.core.targets import SegmentationTarget


def _reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(net(x).square().sum(), x)[0]


def _fast(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    x = x.detach().requires_grad_(True)
    with input_gradients(net) as covered:
        out = net(x)
    return torch.autograd.grad(out.square().sum(), x)[0], covered


CASES = {
    "conv1d padded": (nn.Conv1d(3, 5, 3, padding=1), (2, 3, 17)),
    "conv1d valid": (nn.Conv1d(3, 4, 5), (1, 3, 20)),
    "conv2d dilated": (nn.Conv2d(2, 4, 3, padding=2, dilation=2), (2, 2, 11, 13)),
    "conv2d grouped": (nn.Conv2d(4, 6, 3, padding=1, groups=2), (1, 4, 9, 9)),
    "conv2d depthwise same": (nn.Conv2d(4, 4, 3, padding="same", groups=4), (1, 4, 8, 10)),
    "conv3d 1x1": (nn.Conv3d(3, 2, 1), (1, 3, 5, 6, 7)),
    "conv3d": (nn.Conv3d(3, 3, 3, padding=1), (2, 3, 9, 8, 7)),
    "conv3d asymmetric kernel": (nn.Conv3d(2, 3, (1, 3, 5), padding=(0, 1, 2)), (1, 2, 6, 7, 8)),
    "conv3d many channels grouped": (nn.Conv3d(12, 10, 3, padding=2, dilation=2, groups=2), (1, 12, 6, 5, 7)),
    "conv3d depthwise few channels": (nn.Conv3d(4, 4, 3, padding=1, groups=4), (1, 4, 5, 6, 7)),
    "transposed2d stride 2": (nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), (1, 4, 6, 7)),
    "transposed3d stride 2": (nn.ConvTranspose3d(4, 3, 2, stride=2), (2, 4, 4, 5, 3)),
    "transposed3d many channels": (
        nn.ConvTranspose3d(12, 8, 3, stride=2, padding=1, output_padding=1),
        (1, 12, 4, 3, 5),
    ),
    "transposed3d grouped dilated": (
        nn.ConvTranspose3d(4, 6, 3, stride=1, padding=1, dilation=2, groups=2),
        (1, 4, 5, 5, 5),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_eligible_convolution_matches_autograd(name: str) -> None:
    torch.manual_seed(0)
    module, shape = CASES[name]
    assert eligible(module)
    x = torch.randn(shape)
    expected = _reference(module, x)
    found, covered = _fast(module, x)
    assert covered == 1
    assert found.shape == expected.shape
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv3d(2, 2, 3, stride=2, padding=1),  # strided: autograd's transposed convolution is the right tool
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(2, 2, 4, padding="same"),  # asymmetric implicit padding
        nn.Conv2d(2, 2, 3, padding=3),  # padding beyond the kernel's reach
        nn.Linear(3, 3),
    ],
)
def test_other_layers_are_left_to_autograd(module: nn.Module) -> None:
    assert not eligible(module)


def test_a_unet_decoder_with_in_place_activations_matches_autograd() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.ConvTranspose3d(8, 4, 2, stride=2),
        nn.LeakyReLU(inplace=True),
        nn.Conv3d(4, 3, 3, padding=1),
    )
    x = torch.randn(2, 1, 8, 8, 8)
    expected = _reference(net, x)
    found, covered = _fast(net, x)
    assert covered == 3
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_probe_gradients_equal_plain_autograd_and_leave_parameters_alone() -> None:
    """The layer gradient a CAM uses, through a MONAI U-Net decoder, against plain autograd."""
    from monai.networks.nets import UNet

    torch.manual_seed(2)
    net = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    target = SegmentationTarget(1, pixels="image")
    for layer in ("model.1.submodule.1", "model.1.submodule.2", "model.2.0.conv"):
        capture = Probe(net).capture(x, {"l": layer}, target, gradients=True)
        assert capture.gradients is not None
        activation: dict[str, torch.Tensor] = {}
        handle = net.get_submodule(layer).register_forward_hook(
            lambda m, i, o, seen=activation: seen.setdefault("a", o)
        )
        with torch.enable_grad():
            out = net(x)
        handle.remove()
        expected = torch.autograd.grad(target.bind(out).score(out).sum(), activation["a"])[0]
        found = capture.gradients["l"]
        assert (found - expected).abs().max() <= 1e-5 * expected.abs().max(), layer
    assert all(p.grad is None for p in net.parameters())


def test_bfloat16_autocast_gradients_stay_close() -> None:
    """Under CPU bfloat16 autocast the wrapped backward still agrees with autograd's to bfloat16 precision."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose3d(4, 2, 2, stride=2))
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _reference(net, x)
        found, _ = _fast(net, x)
    assert found.dtype == expected.dtype
    assert (found.float() - expected.float()).abs().max() <= 2e-2 * expected.float().abs().max()


def test_the_backward_uses_the_kernel_of_the_forward_pass() -> None:
    """A model may swap its weights before the backward (nnU-Net folds loaded one at a time)."""
    torch.manual_seed(4)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5, 5)
    expected = _reference(conv, x)
    leaf = x.detach().requires_grad_(True)
    with input_gradients(conv):
        out = conv(leaf)
    conv.load_state_dict({k: torch.zeros_like(v) for k, v in conv.state_dict().items()}, assign=True)
    found = torch.autograd.grad(out.square().sum(), leaf)[0]
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_transposed_convolution_given_its_output_size_is_left_to_autograd() -> None:
    torch.manual_seed(5)
    up = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, dilation=3)
    x = torch.randn(1, 2, 5, 5)
    for call, wrapped in (({"output_size": [13, 14]}, False), ({}, True)):
        leaf = x.detach().requires_grad_(True)
        expected = torch.autograd.grad(up(leaf, **call).square().sum(), leaf)[0]
        leaf = x.detach().requires_grad_(True)
        with input_gradients(up):
            out = up(leaf, **call)
        assert (type(out.grad_fn).__name__ == "_ConvInputGradBackward") is wrapped, call
        found = torch.autograd.grad(out.square().sum(), leaf)[0]
        assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def _counting_onednn(monkeypatch: pytest.MonkeyPatch) -> list[torch.memory_format]:
    """Replaces torch.mkldnn_convolution by a wrapper that records the layout of each call's input."""
    calls: list[torch.memory_format] = []
    real = torch.mkldnn_convolution

    def counted(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(torch.channels_last_3d if not x.is_contiguous() else torch.contiguous_format)
        return real(x, *args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counted)
    return calls


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_3d_float32_gradients_go_to_onednn_few_channels_in_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed-up of 3D float32 convolutions is taken (fails if it is silently skipped), and it is exact."""
    calls = _counting_onednn(monkeypatch)
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv3d(2, 12, 3, padding=1), nn.ReLU(), nn.Conv3d(12, 3, 3, padding=1))
    x = torch.randn(1, 2, 6, 6, 6)
    expected = _reference(net, x)
    assert calls == []  # plain autograd never calls it directly
    found, covered = _fast(net, x)
    assert covered == 2
    # backward order: 12 -> 3 (plain layout), then 2 -> 12 (plain layout)
    assert calls == [torch.contiguous_format, torch.contiguous_format]
    assert found.is_contiguous()
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()
    calls.clear()
    small = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))
    expected = _reference(small, x)
    found, _ = _fast(small, x)
    assert calls == [torch.channels_last_3d, torch.channels_last_3d]
    assert found.is_contiguous()  # handed back in the input's layout
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_other_dtypes_and_dimensions_use_the_plain_forward_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_onednn(monkeypatch)
    torch.manual_seed(7)
    conv3 = nn.Conv3d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, 5, dtype=torch.float64)
    expected = _reference(conv3, x)
    found, _ = _fast(conv3, x)
    assert (found - expected).abs().max() <= 1e-12 * expected.abs().max()
    conv2 = nn.Conv2d(2, 3, 3, padding=1)
    _fast(conv2, torch.randn(1, 2, 7, 7))
    assert calls == []


@pytest.mark.parametrize("norm", [nn.InstanceNorm3d(4), nn.InstanceNorm3d(4, affine=True), nn.GroupNorm(2, 4)])
def test_a_normalisation_after_a_few_channel_convolution_gets_a_gradient_in_its_layout(norm: nn.Module) -> None:
    """torch 2.14's instance norm backward is wrong for a channels-last gradient of a batch of one.

    The few-channel convolutions compute in channels-last layout; their input gradient
    must go back to the input's layout before a normalisation sees it.
    """
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), norm, nn.Conv3d(4, 3, 3, padding=1))
    x = torch.randn(1, 2, 6, 6, 6)
    expected = _reference(net, x)
    found, covered = _fast(net, x)
    assert covered == 2
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


class _Skip(nn.Module):
    """A decoder step after a skip concatenation: ``conv(cat(pieces))``, the pieces in ``order``.

    ``"e"`` pieces are encoder features (no grad), ``"d"`` pieces come from the input.
    """

    def __init__(self, conv: nn.Module, order: str, dim: int = 1) -> None:
        super().__init__()
        self.conv, self.order, self.dim = conv, order, dim
        self.encoder = {i: torch.randn(1, 3, 4, 5, 6) for i, kind in enumerate(order) if kind == "e"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = [self.encoder[i] if kind == "e" else x * (i + 1) for i, kind in enumerate(self.order)]
        return self.conv(torch.cat(pieces, self.dim))


SKIPS = {
    # name: (conv, order, channels whose gradient is computed)
    "transposed, encoder first": (nn.ConvTranspose3d(5, 4, 3, stride=2, padding=1, output_padding=1), "ed", 2),
    "convolution, encoder last": (nn.Conv3d(5, 4, 3, padding=1), "de", 2),
    "convolution, two decoder pieces": (nn.Conv3d(7, 6, 3, padding=1), "edd", 4),
    "encoder on both sides": (nn.Conv3d(8, 4, 3, padding=1), "ede", 8),
    "all decoder": (nn.Conv3d(4, 6, 3, padding=1), "dd", 4),
}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("name", sorted(SKIPS))
def test_after_a_skip_concatenation_only_the_decoder_channels_are_computed(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact against autograd; the weight rows handed to the convolution show which channels were computed."""
    torch.manual_seed(9)
    conv, order, computed = SKIPS[name]
    net = _Skip(conv, order)
    x = torch.randn(1, 2, 4, 5, 6)
    expected = _reference(net, x)
    rows: list[int] = []
    real = torch.mkldnn_convolution

    def counted(grad: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        rows.append(weight.shape[0])
        return real(grad, weight, *args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counted)
    found, covered = _fast(net, x)
    assert covered == 1
    assert rows == [computed]
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_concatenation_along_another_axis_or_in_two_dimensions_is_exact() -> None:
    torch.manual_seed(10)
    net = _Skip(nn.Conv3d(3, 4, 3, padding=1), "ed", dim=2)  # along depth: all channels needed
    x = torch.randn(1, 3, 4, 5, 6)
    expected = _reference(net, x)
    found, _ = _fast(net, x)
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()
    # a 2D decoder step (plain forward convolution, not oneDNN)
    skip = torch.randn(1, 3, 6, 6)
    conv = nn.Conv2d(5, 4, 3, padding=1)
    x = torch.randn(1, 2, 6, 6)
    leaf = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(conv(torch.cat([skip, leaf], 1)).square().sum(), leaf)[0]
    leaf = x.clone().requires_grad_(True)
    with input_gradients(conv):
        out = conv(torch.cat([skip, leaf], 1))
    found = torch.autograd.grad(out.square().sum(), leaf)[0]
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_captured_concatenation_gets_its_whole_gradient() -> None:
    """A skip connection's output captured with a layer before it: every channel's gradient, as autograd's."""
    from monai.networks.nets import UNet

    torch.manual_seed(11)
    net = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    target = SegmentationTarget(1, pixels="image")
    layers = {"bottleneck": "model.1.submodule.1.submodule", "skip": "model.1.submodule.1"}
    capture = Probe(net).capture(x, layers, target, gradients=True)
    assert capture.gradients is not None
    seen: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(path).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
        for name, path in layers.items()
    ]
    with torch.enable_grad():
        out = net(x)
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(target.bind(out).score(out).sum(), [seen["bottleneck"], seen["skip"]])
    for name, expected in zip(layers, grads, strict=True):
        found = capture.gradients[name]
        assert (found - expected).abs().max() <= 1e-5 * expected.abs().max(), name
    assert capture.gradients["skip"][:, :8].abs().max() > 0  # the encoder half too
