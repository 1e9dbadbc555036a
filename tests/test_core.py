"""Core engine: ops, layer resolution, output selection, in-place models, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from nets import hook_count, seeded_input, tiny_classifier, tiny_unet
from torch import nn

import medcam
from medcam.core import ops
from medcam.core.hooks import LayerError
from medcam.errors import UserError

# --------------------------------------------------------------------------- ops


def test_minmax_scales_each_sample_and_zeroes_constant_maps() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = ops.minmax(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2)), "constant map -> zeros, not NaN"


def test_divide_by_max_and_raw() -> None:
    maps = torch.tensor([[[1.0, -2.0], [2.0, 4.0]], [[-1.0, -3.0], [0.0, -2.0]]])
    out = ops.normalize(maps, "max")
    torch.testing.assert_close(out[0], torch.tensor([[0.25, -0.5], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2)), "max <= 0 -> zeros"
    assert ops.normalize(maps, None) is maps
    with pytest.raises(UserError, match="normalize='l2'"):
        ops.normalize(maps, "l2")  # type: ignore[arg-type]


def test_upsample_matches_half_pixel_bilinear_by_hand() -> None:
    # 1 x 2 -> 1 x 4 with align_corners=False: sample points at -0.25, 0.25, 0.75, 1.25 (clamped)
    out = ops.upsample(torch.tensor([[[0.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))
    assert ops.upsample(torch.zeros(2, 3, 4, 5), (6, 8, 10)).shape == (2, 6, 8, 10), "trilinear for 3D"


def test_relu_off_keeps_the_sign() -> None:
    model = tiny_classifier(2)
    exp = medcam.explain(model, seeded_input(2), "hirescam", target=0, layers="features.0", relu=False, normalize=None)
    assert exp.map.min() < 0 < exp.map.max()


# ------------------------------------------------------------------ layer choice


def test_auto_picks_the_last_decoder_level_and_says_so() -> None:
    model = tiny_unet(3)
    target = medcam.SegmentationTarget(1, pixels="image")
    exp = medcam.explain(model, seeded_input(3), "hirescam", target=target)
    levels = medcam.discover_levels(model)
    last_decoder = [lv for lv in levels if lv.name.startswith("dec")][-1]
    assert list(exp.layers.values()) == [last_decoder.path]
    assert last_decoder.name in exp.layer_choice
    # the bottleneck stays reachable by name
    exp = medcam.explain(model, seeded_input(3), "hirescam", target=target, layers="levels:bottleneck")
    assert list(exp.layers.values()) == [next(lv.path for lv in levels if lv.name == "bottleneck")]


def test_auto_picks_the_last_feature_map_of_a_classifier() -> None:
    model = torchvision.models.resnet18(weights=None)
    exp = medcam.explain(model, torch.randn(1, 3, 64, 64), "gradcam")
    assert list(exp.layers.values()) == ["layer4"]


def test_levels_are_explained_in_one_call_in_data_flow_order() -> None:
    model = tiny_unet(2)
    exp = medcam.explain(
        model, seeded_input(2), "gradcam", target=medcam.SegmentationTarget(1, "image"), layers="levels"
    )
    assert list(exp.maps) == ["enc0", "enc1", "bottleneck", "dec0", "final"]
    sub = medcam.explain(
        model, seeded_input(2), "gradcam", target=medcam.SegmentationTarget(1, "image"), layers="levels:bottleneck,enc1"
    )
    assert list(sub.maps) == ["bottleneck", "enc1"]
    torch.testing.assert_close(sub.maps["enc1"], exp.maps["enc1"])


def test_unknown_layer_lists_the_closest_names() -> None:
    with pytest.raises(LayerError, match=r"'features\.9'.*closest: features\.5"):
        medcam.explain(tiny_classifier(2), seeded_input(2), layers="features.9")


def test_unknown_level_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="level 'bottom' does not exist"):
        medcam.explain(tiny_unet(2), seeded_input(2), target=1, layers="levels:bottom")


def test_unused_layer_is_an_error() -> None:
    model = tiny_classifier(2)
    model.spare = nn.Conv2d(1, 1, 1)
    with pytest.raises(LayerError, match="did not run"):
        medcam.explain(model, seeded_input(2), target=0, layers="spare")


def test_shared_module_is_ambiguous() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.act(self.conv(x))).mean((2, 3)))

    with pytest.raises(LayerError, match="ran 2 times"):
        medcam.explain(Twice(), seeded_input(2), target=0, layers="act")


def test_layer_the_target_does_not_depend_on() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(1, 2, 3, padding=1)
            self.unused = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.unused(x)
            return self.used(x).mean((2, 3))

    with pytest.raises(LayerError, match="does not depend on"):
        medcam.explain(Branch(), seeded_input(2), target=0, layers="unused")


def test_auto_on_an_unknown_segmentation_net_asks_for_a_layer() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(UserError, match="pass layers="):
        medcam.explain(net, seeded_input(2), target=1)


# ---------------------------------------------------------- models of every kind


def _inplace_twin(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_inplace_relu_after_the_hooked_layer_gives_the_layer_s_own_map(method: str) -> None:
    """The BatchNorm output is overwritten by ReLU(inplace=True); medcam must still see it."""
    x = seeded_input(2)
    inplace = medcam.explain(_inplace_twin(True), x, method, target=1, layers="1", relu=False, normalize=None)
    plain = medcam.explain(_inplace_twin(False), x, method, target=1, layers="1", relu=False, normalize=None)
    torch.testing.assert_close(inplace.map, plain.map)
    assert inplace.map.min() < 0, "pre-ReLU values were captured"


def test_tuple_and_dict_outputs_with_selectors() -> None:
    base = tiny_classifier(2)

    class TupleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net(x), torch.zeros(1)

    class DictNet(TupleNet):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"aux": torch.zeros(1), "logits": self.net(x)}

    x = seeded_input(2)
    reference = medcam.explain(base, x, target=2, layers="features").map
    torch.testing.assert_close(medcam.explain(TupleNet(), x, target=2, layers="net.features").map, reference)
    dict_map = medcam.explain(DictNet(), x, target=2, layers="net.features", output="logits").map
    torch.testing.assert_close(dict_map, reference)
    with pytest.raises(UserError, match="pass output=<key>"):
        medcam.explain(DictNet(), x, target=2, layers="net.features")


def test_frozen_parameters_still_explain() -> None:
    model = tiny_classifier(2)
    for p in model.parameters():
        p.requires_grad_(False)
    exp = medcam.explain(model, seeded_input(2), "gradcam", target=1, layers="features")
    assert exp.map.max() == 1
    assert all(not p.requires_grad for p in model.parameters())


def test_training_mode_batchnorm_with_batch_one_runs_in_eval_mode_and_keeps_statistics() -> None:
    model = tiny_classifier(2).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    exp = medcam.explain(model, seeded_input(2, batch=1), "gradcam", target=0, layers="features")
    assert torch.isfinite(exp.map).all()
    assert model.training
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert hook_count(model) == 0


# ----------------------------------------------------------------- bad input


def test_class_index_out_of_range() -> None:
    with pytest.raises(
        medcam.TargetError, match=r"class index 5 is out of range .* 3 output channels \(valid: 0\.\.2\)"
    ):
        medcam.explain(tiny_classifier(2), seeded_input(2), target=5, layers="features")


def test_empty_pixel_set_says_why_and_what_to_do() -> None:
    model = tiny_unet(2)
    box = torch.zeros(16, 16, dtype=torch.bool)
    with pytest.raises(medcam.TargetError, match=r"pixel set M .* is empty .* pixels='image'"):
        medcam.explain(model, seeded_input(2), target=medcam.SegmentationTarget(1, pixels=box), layers="levels:enc0")


def test_non_finite_model_output_is_refused() -> None:
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) / 0.0

    with pytest.raises(medcam.TargetError, match="NaN or Inf"):
        medcam.explain(Exploding(), seeded_input(2), target=0, layers="conv")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(16, 16), "batch axis"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.int64), "floating-point"),
        (torch.full((1, 1, 16, 16), float("nan")), "NaN or Inf"),
    ],
)
def test_bad_input_tensor(x: torch.Tensor, message: str) -> None:
    with pytest.raises((UserError, TypeError), match=message):
        medcam.explain(tiny_classifier(2), x, target=0, layers="features")


def test_unknown_method_and_option() -> None:
    with pytest.raises(UserError, match="did you mean gradcam"):
        medcam.explain(tiny_classifier(2), seeded_input(2), "gradcma", target=0)
    with pytest.raises(TypeError, match="has no option"):
        medcam.explain(tiny_classifier(2), seeded_input(2), "gradcam", target=0, theta=3)


def test_cam_refuses_a_model_that_is_not_gap_plus_linear() -> None:
    model = tiny_classifier(2)
    with pytest.raises(UserError, match="not linear\\(global-average-pool"):
        medcam.explain(model, seeded_input(2), "cam", target=0, layers="features.0")
    with pytest.raises(UserError, match="classifiers only"):
        medcam.explain(tiny_unet(2), seeded_input(2), "cam", target=medcam.SegmentationTarget(1, "image"))


def test_segmentation_target_on_a_classifier_and_vice_versa() -> None:
    with pytest.raises(medcam.TargetError, match="use ClassTarget"):
        medcam.explain(tiny_classifier(2), seeded_input(2), target=medcam.SegmentationTarget(1), layers="features")
    with pytest.raises(medcam.TargetError, match="use SegmentationTarget"):
        medcam.explain(tiny_unet(2), seeded_input(2), target=medcam.ClassTarget(1), layers="levels:enc0")
    with pytest.raises(medcam.TargetError, match="say which class"):
        medcam.explain(tiny_unet(2), seeded_input(2), target=None, layers="levels:enc0")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("predicted", medcam.Predicted()),
        ("prob>0.25", medcam.Threshold(0.25)),
        ("image", medcam.WholeImage()),
        ("component", medcam.Component(1)),
        ("component:3", medcam.Component(3)),
        ("voxel:1,2,3", medcam.Voxel((1, 2, 3))),
        ("box:0,1:4,5", medcam.Box((0, 1), (4, 5))),
    ],
)
def test_pixel_set_short_forms(spec: str, expected: medcam.PixelSet) -> None:
    parsed = medcam.parse_pixel_set(spec)
    assert parsed == expected
    assert medcam.parse_pixel_set(parsed.describe()) == parsed, "describe() round-trips"


@pytest.mark.parametrize("spec", ["everything", "prob>1.5", "box:4,4:1,1", "component:0"])
def test_bad_pixel_sets(spec: str) -> None:
    with pytest.raises(UserError):
        medcam.parse_pixel_set(spec)


def test_box_outside_the_output_grid() -> None:
    with pytest.raises(medcam.TargetError, match="outside the output grid"):
        medcam.explain(
            tiny_unet(2), seeded_input(2), target=medcam.SegmentationTarget(1, "box:0,0:40,40"), layers="levels:enc0"
        )


def test_registry_lists_the_core_methods() -> None:
    assert {"cam", "gradcam", "gradcam++", "hirescam", "xgradcam"} <= set(medcam.list_methods())


def test_parallel_frozen_branches_both_get_exact_gradients() -> None:
    """The graph starts at the first hooked layer; a frozen branch hooked later must still count."""

    class TwoBranches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 3, 3, padding=1)
            self.b = nn.Conv2d(1, 3, 3, padding=1)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.a(x), self.b(x).relu()], 1).mean((2, 3)))

    torch.manual_seed(0)
    model = TwoBranches()
    for p in model.parameters():
        p.requires_grad_(False)
    x = seeded_input(2)
    exp = medcam.explain(model, x, "hirescam", target=1, layers=["a", "b"], relu=False, normalize=None)
    a, b = model.a(x).requires_grad_(), model.b(x).requires_grad_()
    score = model.head(torch.cat([a, b.relu()], 1).mean((2, 3)))[:, 1].sum()
    ga, gb = torch.autograd.grad(score, [a, b])
    torch.testing.assert_close(exp.maps["a"], (ga * a).sum(1).detach())
    torch.testing.assert_close(exp.maps["b"], (gb * b).sum(1).detach())


def test_class_argmax_equals_torch_argmax_including_ties() -> None:
    from medcam.core.ops import class_argmax

    torch.manual_seed(0)
    # integer-valued logits make ties common: the first maximal class must win, as in torch
    for shape in [(2, 4, 5, 6, 7), (1, 3, 9, 9), (3, 1, 4, 4), (2, 5, 33)]:
        logits = torch.randint(0, 3, shape).float()
        assert torch.equal(class_argmax(logits), logits.argmax(dim=1)), shape
