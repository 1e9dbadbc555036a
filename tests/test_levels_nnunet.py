"""Level discovery for nnU-Net's networks (dynamic_network_architectures) and MONAI SegResNet(DS)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medcam
from medcam.core.targets import SegmentationTarget
from medcam.errors import UserError
from medcam.models.levels import auto_layer, discover_levels, measure_levels

dna = pytest.importorskip("dynamic_network_architectures")


def _conv_kwargs(features: list[int]) -> dict[str, object]:
    n = len(features)
    return {
        "n_stages": n,
        "features_per_stage": features,
        "conv_op": nn.Conv3d,
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_conv_per_stage_decoder": [1] * (n - 1),
        "conv_bias": True,
        "norm_op": nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
    }


def plain_unet(deep_supervision: bool) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(
        1, num_classes=3, n_conv_per_stage=[1, 1, 1], deep_supervision=deep_supervision, **_conv_kwargs([2, 4, 8])
    )


def resenc_unet() -> nn.Module:
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    torch.manual_seed(0)
    return ResidualEncoderUNet(
        1, num_classes=2, n_blocks_per_stage=[1, 1, 1], deep_supervision=True, **_conv_kwargs([2, 4, 8])
    )


EXPECTED_DNA = [
    ("enc0", "encoder.stages.0", 2, (16, 16, 16)),
    ("enc1", "encoder.stages.1", 4, (8, 8, 8)),
    ("bottleneck", "encoder.stages.2", 8, (4, 4, 4)),
    ("dec0", "decoder.stages.0", 4, (8, 8, 8)),
    ("final", "decoder.stages.1", 2, (16, 16, 16)),
]


@pytest.mark.parametrize("build", [lambda: plain_unet(False), lambda: plain_unet(True), resenc_unet])
def test_nnunet_networks(build: object) -> None:
    net = build()  # type: ignore[operator]
    x = torch.randn(1, 1, 16, 16, 16)
    shapes = measure_levels(net, x)
    assert [(s.name, s.path, s.channels, s.grid) for s in shapes] == EXPECTED_DNA
    assert auto_layer(net, x)[0] == "decoder.stages.0"  # the last decoder level (docs/levels.md)
    logits = net.eval()(x)
    logits = logits[0] if isinstance(logits, list) else logits
    target = SegmentationTarget(1, pixels="image")
    exp = medcam.explain(net, x, "hirescam", target, layers="levels")
    assert list(exp.maps) == [name for name, *_ in EXPECTED_DNA]
    assert all(m.shape[1:] == x.shape[2:] and torch.isfinite(m).all() for m in exp.maps.values())
    torch.testing.assert_close(exp.output, logits)


def test_levels_inside_a_wrapper() -> None:
    wrapped = nn.Sequential(nn.Identity(), plain_unet(False))
    assert discover_levels(wrapped)[0].path == "1.encoder.stages.0"


def test_unrelated_encoder_decoder_is_not_taken_for_a_unet() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.stages = nn.ModuleList([nn.Conv3d(1, 1, 1)] * 3)
            self.decoder = nn.Module()
            self.decoder.stages = nn.ModuleList([nn.Conv3d(1, 1, 1)] * 3)  # not one fewer

    with pytest.raises(UserError, match="pass layers"):
        discover_levels(Odd())


def test_segresnet() -> None:
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    net = SegResNet(
        spatial_dims=3,
        norm=("GROUP", {"num_groups": 2}),
        init_filters=2,
        in_channels=1,
        out_channels=2,
        blocks_down=(1, 1, 1),
        blocks_up=(1, 1),
    )
    x = torch.randn(1, 1, 16, 16, 16)
    shapes = measure_levels(net, x)
    assert [(s.name, s.path, s.channels, s.grid) for s in shapes] == [
        ("enc0", "down_layers.0", 2, (16, 16, 16)),
        ("enc1", "down_layers.1", 4, (8, 8, 8)),
        ("bottleneck", "down_layers.2", 8, (4, 4, 4)),
        ("dec0", "up_layers.0", 4, (8, 8, 8)),
        ("final", "up_layers.1", 2, (16, 16, 16)),
    ]
    assert auto_layer(net, x)[0] == "up_layers.0"  # the last decoder level (docs/levels.md)
    exp = medcam.explain(net, x, "gradcam", SegmentationTarget(1, pixels="image"), layers="levels:enc1,final")
    assert set(exp.maps) == {"enc1", "final"}


def test_segresnet_ds() -> None:
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(0)
    net = SegResNetDS(
        spatial_dims=3,
        norm=("GROUP", {"num_groups": 2}),
        init_filters=2,
        in_channels=1,
        out_channels=2,
        blocks_down=(1, 1, 1),
        dsdepth=2,
    )
    shapes = measure_levels(net, torch.randn(1, 1, 16, 16, 16))
    assert [(s.name, s.path, s.grid) for s in shapes] == [
        ("enc0", "encoder.layers.0.blocks", (16, 16, 16)),
        ("enc1", "encoder.layers.1.blocks", (8, 8, 8)),
        ("bottleneck", "encoder.layers.2.blocks", (4, 4, 4)),
        ("dec0", "up_layers.0.blocks", (8, 8, 8)),
        ("final", "up_layers.1.blocks", (16, 16, 16)),
    ]
