"""U-Net level discovery on every supported architecture, and the one-pass property.

Expected tables (name, module path, channels, output grid) are worked out by hand from
each architecture's definition for the given input (see docs/levels.md); the probe
(``measure_levels``: one hooked forward pass) must reproduce them exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import medcam
from medcam.errors import UserError
from medcam.models.factory import build_model
from medcam.models.levels import LevelError, discover_levels, level_order, measure_levels

Row = tuple[str, str, int, tuple[int, ...]]


def _monai_unet(dims: int, channels: tuple[int, ...], strides: tuple, res: int, out: int = 2) -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(dims, 1, out, channels=channels, strides=strides, num_res_units=res)


def _basic_unet(dims: int, features: tuple[int, ...]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    return BasicUNet(dims, 1, 2, features=features)


def _dyn_unet(dims: int, kernels: list, strides: list, ups: list, filters: list, deep: bool = False) -> nn.Module:
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return DynUNet(
        dims, 1, 3, kernels, strides, ups, filters=filters, deep_supervision=deep, deep_supr_num=2 if deep else 1
    )


def _smp_unet(encoder: str, depth: int, decoder: tuple[int, ...]) -> nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smp.Unet(
            encoder, encoder_depth=depth, encoder_weights=None, decoder_channels=decoder, in_channels=1, classes=2
        )


# (builder, input shape, expected rows); every row worked out by hand
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[Row]]] = {
    # MONAI UNet: strided encoder convs, so enc0 is at 1/2; final = outermost skip concat (c0 + c0)
    "monai_unet_2d_res0": (
        lambda: _monai_unet(2, (4, 8, 16), (2, 2), 0),
        (1, 1, 32, 32),
        [
            ("enc0", "model.0", 4, (16, 16)),
            ("enc1", "model.1.submodule.0", 8, (8, 8)),
            ("bottleneck", "model.1.submodule.1.submodule", 16, (8, 8)),
            ("dec0", "model.1.submodule.2", 4, (16, 16)),
            ("final", "model.1", 8, (16, 16)),
        ],
    ),
    "monai_unet_3d_res2_depth4": (
        lambda: _monai_unet(3, (2, 4, 8, 16), (2, 2, 2), 2),
        (1, 1, 16, 16, 16),
        [
            ("enc0", "model.0", 2, (8, 8, 8)),
            ("enc1", "model.1.submodule.0", 4, (4, 4, 4)),
            ("enc2", "model.1.submodule.1.submodule.0", 8, (2, 2, 2)),
            ("bottleneck", "model.1.submodule.1.submodule.1.submodule", 16, (2, 2, 2)),
            ("dec0", "model.1.submodule.1.submodule.2", 4, (4, 4, 4)),
            ("dec1", "model.1.submodule.2", 2, (8, 8, 8)),
            ("final", "model.1", 4, (8, 8, 8)),
        ],
    ),
    # two channels: no inner decoder; final = concat of enc0 (4) and the bottom block (8)
    "monai_unet_3d_depth2": (
        lambda: _monai_unet(3, (4, 8), (2,), 1),
        (1, 1, 8, 8, 8),
        [
            ("enc0", "model.0", 4, (4, 4, 4)),
            ("bottleneck", "model.1.submodule", 8, (4, 4, 4)),
            ("final", "model.1", 12, (4, 4, 4)),
        ],
    ),
    "monai_unet_3d_anisotropic": (
        lambda: _monai_unet(3, (4, 8, 16), ((1, 2, 2), 2), 1),
        (1, 1, 8, 16, 16),
        [
            ("enc0", "model.0", 4, (8, 8, 8)),
            ("enc1", "model.1.submodule.0", 8, (4, 4, 4)),
            ("bottleneck", "model.1.submodule.1.submodule", 16, (4, 4, 4)),
            ("dec0", "model.1.submodule.2", 4, (8, 8, 8)),
            ("final", "model.1", 8, (8, 8, 8)),
        ],
    ),
    # BasicUNet: features (f0..f4, f_last); upcat_k outputs f_{k-1} (upcat_1: f_last)
    "basic_unet_2d": (
        lambda: _basic_unet(2, (4, 4, 8, 8, 16, 4)),
        (1, 1, 32, 32),
        [
            ("enc0", "conv_0", 4, (32, 32)),
            ("enc1", "down_1", 4, (16, 16)),
            ("enc2", "down_2", 8, (8, 8)),
            ("enc3", "down_3", 8, (4, 4)),
            ("bottleneck", "down_4", 16, (2, 2)),
            ("dec0", "upcat_4", 8, (4, 4)),
            ("dec1", "upcat_3", 8, (8, 8)),
            ("dec2", "upcat_2", 4, (16, 16)),
            ("final", "upcat_1", 4, (32, 32)),
        ],
    ),
    "basic_unet_3d": (
        lambda: _basic_unet(3, (2, 2, 4, 4, 8, 2)),
        (1, 1, 32, 32, 32),
        [
            ("enc0", "conv_0", 2, (32, 32, 32)),
            ("enc1", "down_1", 2, (16, 16, 16)),
            ("enc2", "down_2", 4, (8, 8, 8)),
            ("enc3", "down_3", 4, (4, 4, 4)),
            ("bottleneck", "down_4", 8, (2, 2, 2)),
            ("dec0", "upcat_4", 4, (4, 4, 4)),
            ("dec1", "upcat_3", 4, (8, 8, 8)),
            ("dec2", "upcat_2", 2, (16, 16, 16)),
            ("final", "upcat_1", 2, (32, 32, 32)),
        ],
    ),
    # DynUNet with deep supervision: the heads are side outputs, not levels
    "dyn_unet_2d_deep_supervision": (
        lambda: _dyn_unet(2, [3, 3, 3, 3], [1, 2, 2, 2], [2, 2, 2], [4, 8, 16, 32], deep=True),
        (1, 1, 32, 32),
        [
            ("enc0", "input_block", 4, (32, 32)),
            ("enc1", "downsamples.0", 8, (16, 16)),
            ("enc2", "downsamples.1", 16, (8, 8)),
            ("bottleneck", "bottleneck", 32, (4, 4)),
            ("dec0", "upsamples.0", 16, (8, 8)),
            ("dec1", "upsamples.1", 8, (16, 16)),
            ("final", "upsamples.2", 4, (32, 32)),
        ],
    ),
    # the KiTS configuration's shape: in-plane first, then isotropic down-sampling
    "dyn_unet_3d_anisotropic": (
        lambda: _dyn_unet(
            3, [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 2, 2], [2, 2, 2]], [4, 8, 16]
        ),
        (1, 1, 8, 16, 16),
        [
            ("enc0", "input_block", 4, (8, 16, 16)),
            ("enc1", "downsamples.0", 8, (8, 8, 8)),
            ("bottleneck", "bottleneck", 16, (4, 4, 4)),
            ("dec0", "upsamples.0", 8, (8, 8, 8)),
            ("final", "upsamples.1", 4, (8, 16, 16)),
        ],
    ),
    # smp resnet: conv1-bn1-relu at 1/2, layer1 at 1/4 (after max pooling), layer2..4 halve again
    "smp_resnet18_depth5": (
        lambda: _smp_unet("resnet18", 5, (16, 16, 8, 8, 4)),
        (1, 1, 64, 64),
        [
            ("enc0", "encoder.relu", 64, (32, 32)),
            ("enc1", "encoder.layer1", 64, (16, 16)),
            ("enc2", "encoder.layer2", 128, (8, 8)),
            ("enc3", "encoder.layer3", 256, (4, 4)),
            ("bottleneck", "encoder.layer4", 512, (2, 2)),
            ("dec0", "decoder.blocks.0", 16, (4, 4)),
            ("dec1", "decoder.blocks.1", 16, (8, 8)),
            ("dec2", "decoder.blocks.2", 8, (16, 16)),
            ("dec3", "decoder.blocks.3", 8, (32, 32)),
            ("final", "decoder.blocks.4", 4, (64, 64)),
        ],
    ),
    "smp_resnet34_depth3": (
        lambda: _smp_unet("resnet34", 3, (8, 8, 4)),
        (1, 1, 32, 32),
        [
            ("enc0", "encoder.relu", 64, (16, 16)),
            ("enc1", "encoder.layer1", 64, (8, 8)),
            ("bottleneck", "encoder.layer2", 128, (4, 4)),
            ("dec0", "decoder.blocks.0", 8, (8, 8)),
            ("dec1", "decoder.blocks.1", 8, (16, 16)),
            ("final", "decoder.blocks.2", 4, (32, 32)),
        ],
    ),
    # bottleneck blocks: 4x wider outputs (256, 512, 1024)
    "smp_resnet50_depth4": (
        lambda: _smp_unet("resnet50", 4, (8, 8, 4, 4)),
        (1, 1, 32, 32),
        [
            ("enc0", "encoder.relu", 64, (16, 16)),
            ("enc1", "encoder.layer1", 256, (8, 8)),
            ("enc2", "encoder.layer2", 512, (4, 4)),
            ("bottleneck", "encoder.layer3", 1024, (2, 2)),
            ("dec0", "decoder.blocks.0", 8, (4, 4)),
            ("dec1", "decoder.blocks.1", 8, (8, 8)),
            ("dec2", "decoder.blocks.2", 4, (16, 16)),
            ("final", "decoder.blocks.3", 4, (32, 32)),
        ],
    ),
    # another encoder family: the stage ends are inverted-residual blocks, found by what they produce
    "smp_mobilenet_v2_depth3": (
        lambda: _smp_unet("mobilenet_v2", 3, (8, 8, 4)),
        (1, 1, 32, 32),
        [
            ("enc0", "encoder.features.1", 16, (16, 16)),
            ("enc1", "encoder.features.3", 24, (8, 8)),
            ("bottleneck", "encoder.features.6", 32, (4, 4)),
            ("dec0", "decoder.blocks.0", 8, (8, 8)),
            ("dec1", "decoder.blocks.1", 8, (16, 16)),
            ("final", "decoder.blocks.2", 4, (32, 32)),
        ],
    ),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_levels_have_the_expected_names_order_channels_and_grids(name: str) -> None:
    build, shape, expected = ARCHITECTURES[name]
    model = build()
    levels = discover_levels(model)
    assert [(lv.name, lv.path) for lv in levels] == [(n, p) for n, p, _, _ in expected]
    measured = measure_levels(model, torch.zeros(shape), levels)
    assert [(m.name, m.path, m.channels, m.grid) for m in measured] == expected


def test_discovery_does_not_touch_the_model() -> None:
    model = _smp_unet("resnet18", 3, (8, 8, 4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover_levels(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # batch-norm statistics untouched


def test_an_smp_encoder_with_stages_outside_modules_fails_clearly() -> None:
    model = _smp_unet("mit_b0", 5, (8, 8, 8, 4, 4))
    with pytest.raises(LevelError, match=r"mit_b0.*computed outside any module.*decoder\.blocks\.0"):
        discover_levels(model)


def test_an_smp_decoder_center_block_is_the_bottleneck() -> None:
    """smp adds a center block for vgg encoders (building vgg takes seconds: a resnet gets one here)."""
    from segmentation_models_pytorch.decoders.unet.decoder import UnetCenterBlock

    model = _smp_unet("resnet18", 3, (8, 8, 4))
    model.decoder.center = UnetCenterBlock(128, 128)
    rows = [(m.name, m.path, m.channels, m.grid) for m in measure_levels(model, torch.zeros(1, 1, 32, 32))]
    # every encoder feature is an encoder level; the center block (two convs at the lowest
    # resolution, between encoder and decoder) is the bottleneck
    assert rows == [
        ("enc0", "encoder.relu", 64, (16, 16)),
        ("enc1", "encoder.layer1", 64, (8, 8)),
        ("enc2", "encoder.layer2", 128, (4, 4)),
        ("bottleneck", "decoder.center", 128, (4, 4)),
        ("dec0", "decoder.blocks.0", 8, (8, 8)),
        ("dec1", "decoder.blocks.1", 8, (16, 16)),
        ("final", "decoder.blocks.2", 4, (32, 32)),
    ]


class _Normalised(nn.Module):
    """A typical deployment wrapper: normalisation, then the network as an attribute."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.25)


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [(lambda m: nn.Sequential(nn.Identity(), m), "1."), (_Normalised, "net.")],
)
def test_levels_are_found_inside_wrappers(wrap: Callable[[nn.Module], nn.Module], prefix: str) -> None:
    for inner in (_monai_unet(2, (4, 8, 16), (2, 2), 1), _smp_unet("resnet18", 3, (8, 8, 4))):
        plain = discover_levels(inner)
        wrapped = discover_levels(wrap(inner))
        assert [(lv.name, prefix + lv.path) for lv in plain] == [(lv.name, lv.path) for lv in wrapped]


@pytest.mark.parametrize(
    ("architecture", "arguments", "shape", "count"),
    [
        ("monai.UNet", {"spatial_dims": 3, "channels": [4, 8, 16, 32], "strides": [2, 2, 2]}, (1, 1, 16, 16, 16), 7),
        ("monai.UNet", {"spatial_dims": 2, "channels": [4, 8, 16, 32], "strides": [2, 2, 2]}, (1, 1, 32, 32), 7),
        ("monai.BasicUNet", {"spatial_dims": 3, "features": [2, 2, 4, 4, 8, 2]}, (1, 1, 32, 32, 32), 9),
        (
            "monai.DynUNet",
            {
                "spatial_dims": 3,
                "kernel_size": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                "upsample_kernel_size": [[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                "filters": [4, 8, 16, 32],
                "deep_supervision": False,
            },
            (1, 1, 8, 16, 16),
            7,
        ),
        ("smp.Unet", {"encoder_name": "resnet18", "encoder_weights": None, "encoder_depth": 3}, (1, 1, 32, 32), 6),
    ],
)
def test_every_segmentation_architecture_of_the_factory_has_levels(
    architecture: str, arguments: dict, shape: tuple[int, ...], count: int
) -> None:
    """What medcam trains (models/factory.py, the training configs' architectures)."""
    io = {"in_channels": 1, "classes": 3} if architecture == "smp.Unet" else {"in_channels": 1, "out_channels": 3}
    if architecture == "smp.Unet":
        arguments = {**arguments, "decoder_channels": [8, 8, 4]}
    torch.manual_seed(0)
    model = build_model(architecture, **arguments, **io)
    measured = measure_levels(model, torch.zeros(shape))
    names = [m.name for m in measured]
    assert len(names) == count and names == level_order(names)
    assert names[0] == "enc0" and "bottleneck" in names and names[-1] == "final"
    # resolution falls to the bottleneck and rises again to the final level
    sizes = [int(torch.tensor(m.grid).prod()) for m in measured]
    middle = names.index("bottleneck")
    assert sizes[: middle + 1] == sorted(sizes[: middle + 1], reverse=True)
    assert sizes[middle:] == sorted(sizes[middle:])


class _EncoderDecoder(nn.Module):
    """A small encoder-decoder that no finder knows: levels come as explicit module paths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        return self.head(torch.cat([skip, self.up(self.down(skip))], dim=1))


def test_any_network_takes_an_explicit_list_of_module_paths() -> None:
    torch.manual_seed(0)
    model = _EncoderDecoder()
    with pytest.raises(LevelError, match="pass layers=\\[module paths\\]"):
        discover_levels(model)
    paths = {"enc0": "stem", "bottleneck": "down", "final": "up"}
    shapes = measure_levels(model, torch.zeros(1, 1, 16, 16), paths)
    assert [(s.name, s.channels, s.grid) for s in shapes] == [
        ("enc0", 4, (16, 16)),
        ("bottleneck", 8, (8, 8)),
        ("final", 4, (16, 16)),
    ]
    exp = medcam.explain(model, torch.randn(1, 1, 16, 16), "hirescam", medcam.SegmentationTarget(1, "image"), paths)
    assert list(exp.maps) == ["enc0", "bottleneck", "final"]
    exp = medcam.explain(model, torch.randn(1, 1, 16, 16), "hirescam", medcam.SegmentationTarget(1, "image"), ["stem"])
    assert list(exp.layers.values()) == ["stem"]


def test_unknown_and_empty_level_lists_are_errors() -> None:
    model = _monai_unet(2, (4, 8, 16), (2, 2), 0)
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(LevelError, match=r"level 'enc7' does not exist \(closest: enc1, enc0"):
        medcam.explain(model, x, target=medcam.SegmentationTarget(1, "image"), layers="levels:enc7")
    with pytest.raises(UserError, match="no level names"):
        medcam.explain(model, x, target=medcam.SegmentationTarget(1, "image"), layers="levels:")


def test_level_order_is_data_flow_order() -> None:
    assert level_order(["final", "dec1", "bottleneck", "enc10", "enc2", "dec0", "custom"]) == [
        "enc2",
        "enc10",
        "bottleneck",
        "dec0",
        "dec1",
        "final",
        "custom",
    ]


# ------------------------------------------------------------------ one pass


ONE_PASS = {
    "monai_unet_3d": (lambda: _monai_unet(3, (4, 8, 16), (2, 2), 1, out=3), (1, 1, 16, 16, 16)),
    "monai_unet_2d_res0": (lambda: _monai_unet(2, (4, 8, 16), (2, 2), 0, out=3), (2, 1, 32, 32)),
    "basic_unet_2d": (lambda: _basic_unet(2, (4, 4, 8, 8, 16, 4)), (1, 1, 32, 32)),
    "dyn_unet_2d_deep_supervision": (
        lambda: _dyn_unet(2, [3, 3, 3, 3], [1, 2, 2, 2], [2, 2, 2], [4, 8, 16, 32], deep=True),
        (1, 1, 32, 32),
    ),
    "smp_resnet18": (lambda: _smp_unet("resnet18", 3, (8, 8, 4)), (1, 1, 32, 32)),
}


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
@pytest.mark.parametrize("name", list(ONE_PASS))
def test_all_levels_in_one_pass_equal_level_by_level(name: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seg-Grad-CAM and Seg-HiRes-Grad CAM of every level from ONE forward and ONE backward pass
    equal the maps computed one level per call (raw maps: no ReLU, no normalisation)."""
    build, shape = ONE_PASS[name]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    target = medcam.SegmentationTarget(
        1, pixels="box:" + ",".join("2" for _ in shape[2:]) + ":" + ",".join(str(s - 3) for s in shape[2:])
    )
    forwards, backwards = [], []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    grad = torch.autograd.grad

    def counted(*args: object, **kwargs: object) -> object:
        backwards.append(1)
        return grad(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", counted)
    together = medcam.explain(model, x, method, target, "levels", relu=False, normalize=None)
    assert (len(forwards), len(backwards)) == (1, 1)
    assert list(together.maps) == [lv.name for lv in discover_levels(model)]
    for level, path in together.layers.items():
        alone = medcam.explain(model, x, method, target, {level: path}, relu=False, normalize=None)
        scale = float(alone.maps[level].abs().max())
        assert scale > 0, f"{level}: the map is all zeros, the comparison would be empty"
        torch.testing.assert_close(together.maps[level], alone.maps[level], rtol=1e-5, atol=1e-6 * scale)
