"""Fusion-CAM and Union-CAM end to end, against the steps written out by hand.

The references take Grad-CAM and Score-CAM maps from medcam (tested on their own)
and redo every fusion step with numpy and plain model calls: percentile, the
contribution weights against the baseline image, the weighted union, the
similarity fusion. Tolerance 1e-5 on maps in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from region_nets import small_classifier, small_input

import medcam
from medcam.core.perturbation import baseline_image
from medcam.errors import UserError

TOL = 1e-5


def _f(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(x).softmax(dim=1)[torch.arange(len(classes)), classes].numpy()


def _mm(a: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, a.ndim))
    low, high = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    return (a - low) / np.where(high > low, high - low, 1.0)


def _weights(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.maximum(a, 0), np.maximum(b, 0)
    total = a + b
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, a / safe, 0.5), np.where(total > 0, b / safe, 0.5)


def _col(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def reference_fusion(model, x, classes, gradient="gradcam", theta=10.0, baseline="zeros"):
    layers, target = "features", medcam.ClassTarget(classes)
    l_g = medcam.explain(model, x, gradient, target=target, layers=layers).map.numpy()
    l_r = medcam.explain(model, x, "scorecam", target=target, layers=layers).map.numpy()
    xb = baseline_image(x, baseline)
    xn, bn = x.numpy(), xb.numpy()

    def beta(cam: np.ndarray) -> np.ndarray:
        masked = bn + cam[:, None] * (xn - bn)
        return _f(model, torch.from_numpy(masked), classes) - _f(model, xb, classes)

    threshold = np.percentile(l_g.reshape(len(classes), -1), theta, axis=1)
    l_d = np.where(l_g >= _col(threshold, l_g), l_g, 0.0)
    beta_r = beta(l_r)
    w_d, w_r = _weights(beta(l_d), beta_r)
    l_gr = _mm(_col(w_d, l_d) * l_d + _col(w_r, l_r) * l_r)
    w_gr, w_r2 = _weights(beta(l_gr), beta_r)
    l1, l2 = _col(w_gr, l_gr) * l_gr, _col(w_r2, l_r) * l_r
    s = np.clip(1 - np.abs(l1 - l2), 0, 1)
    return _mm(s * np.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2), s


@pytest.mark.parametrize(
    ("dims", "gradient", "baseline"),
    [(2, "gradcam", "zeros"), (3, "gradcam", "zeros"), (2, "gradcam++", "min"), (2, "xgradcam", "blur")],
)
def test_fusioncam_matches_the_steps_written_out(dims: int, gradient: str, baseline: str) -> None:
    model, x = small_classifier(dims), small_input(dims, batch=2, size=12, seed=3)
    classes = [1, 2]
    exp = medcam.explain(
        model,
        x,
        "fusioncam",
        target=medcam.ClassTarget(classes),
        layers="features",
        gradient=gradient,
        baseline=baseline,
    )
    expected, agreement = reference_fusion(model, x, classes, gradient=gradient, baseline=baseline)
    np.testing.assert_allclose(exp.map.numpy(), expected, atol=TOL)
    np.testing.assert_allclose(exp.extras["agreement"]["features"].numpy(), agreement, atol=TOL)
    assert set(exp.stats["betas"]["features"]) == {"denoised_gradient", "region", "combined"}


def test_agreement_is_returned_per_layer_at_input_resolution() -> None:
    model, x = small_classifier(2), small_input(2, batch=2, size=12)
    layers = {"late": "features", "early": "features.1"}
    exp = medcam.explain(model, x, "fusioncam", target=1, layers=layers)
    assert set(exp.extras["agreement"]) == {"late", "early"}
    for agreement in exp.extras["agreement"].values():
        assert agreement.shape == (2, 12, 12)
        assert agreement.min() >= 0 and agreement.max() <= 1


def test_theta_zero_skips_denoising() -> None:
    model, x = small_classifier(2), small_input(2, size=12, seed=3)
    exp = medcam.explain(model, x, "fusioncam", target=1, layers="features", theta=0.0)
    expected, _ = reference_fusion(model, x, [1], theta=0.0)
    np.testing.assert_allclose(exp.map.numpy(), expected, atol=TOL)


def test_fusioncam_costs_a_few_forward_passes_more_than_its_scorecam() -> None:
    model, x = small_classifier(2), small_input(2, batch=2, size=12)
    score = medcam.explain(model, x, "scorecam", target=1, layers="features")
    fusion = medcam.explain(model, x, "fusioncam", target=1, layers="features")
    # baseline + denoised gradient map ride in Score-CAM's batches; then one batch for
    # beta(L_r) and one for beta(L_gr): 4 inputs per sample and layer
    assert fusion.stats["scored_inputs"] == score.stats["scored_inputs"] + 2 * 4
    assert fusion.stats["forward_passes"] <= score.stats["forward_passes"] + 3


def test_fusioncam_with_group_cam_region_part() -> None:
    model, x = small_classifier(2), small_input(2, batch=2, size=16, seed=3)
    exp = medcam.explain(model, x, "fusioncam", target=1, layers="features", region="groupcam", groups=3)
    assert exp.stats["layers"]["features"]["groups"] == 3
    group = medcam.explain(model, x, "groupcam", target=1, layers="features", groups=3)
    assert exp.stats["scored_inputs"] == group.stats["scored_inputs"] + 2 * 4


def reference_union(model, x, classes):
    """Union-CAM with the gradient part written out (per-channel 10th-percentile denoising)."""
    store = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(out[torch.arange(len(classes)), classes].sum(), store["a"])
    g, a = grads.numpy(), store["a"].detach().numpy()
    n, k = g.shape[:2]
    threshold = np.percentile(g.reshape(n, k, -1), 10, axis=2).reshape(n, k, 1, 1)
    positive = np.maximum(np.where(g >= threshold, g, 0.0), 0)
    total = positive.sum(axis=(2, 3), keepdims=True)
    w = np.where(total > 0, positive / np.where(total > 0, total, 1), 0.0)
    raw = torch.from_numpy(np.maximum((w * a).sum(axis=1), 0))[:, None]
    l_d = _mm(torch.nn.functional.interpolate(raw, size=x.shape[2:], mode="bilinear").squeeze(1).numpy())
    l_r = medcam.explain(model, x, "scorecam", target=medcam.ClassTarget(classes), layers="features").map.numpy()
    base = _f(model, torch.zeros_like(x), classes)

    def beta(cam: np.ndarray) -> np.ndarray:
        return _f(model, torch.from_numpy(cam[:, None] * x.numpy()), classes) - base

    w_d, w_r = _weights(beta(l_d), beta(l_r))
    combined = _mm(_col(w_d, l_d) * l_d + _col(w_r, l_r) * l_r)
    keep = _col(beta(combined) > beta(l_r), combined)
    return _mm(np.where(keep, combined, l_r))


def test_unioncam_matches_the_steps_written_out() -> None:
    model, x = small_classifier(2), small_input(2, batch=2, size=12, seed=3)
    exp = medcam.explain(model, x, "unioncam", target=medcam.ClassTarget([1, 2]), layers="features")
    np.testing.assert_allclose(exp.map.numpy(), reference_union(model, x, [1, 2]), atol=TOL)
    assert len(exp.stats["chosen"]["features"]) == 2


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("fusioncam", {"gradient": "scorecam"}, "gradient='scorecam' is not a gradient method"),
        ("fusioncam", {"region": "gradcam"}, "region='gradcam' is not a region method"),
        ("fusioncam", {"theta": 100}, r"theta is a percentage in \[0, 100\)"),
        ("fusioncam", {"baseline": "black"}, "baseline='black' is not known"),
        ("fusioncam", {"region": "groupcam", "max_channels": 4}, "max_channels applies to the Score-CAM"),
        ("unioncam", {"precision": "half"}, "precision='half' is not known"),
        ("unioncam", {"theta": -1}, "theta is a percentage"),
    ],
)
def test_bad_options_are_user_errors(method: str, options: dict, message: str) -> None:
    model, x = small_classifier(2), small_input(2)
    with pytest.raises(UserError, match=message):
        medcam.explain(model, x, method, target=1, layers="features", **options)


def test_paper_variant_matches_eqs_1_to_6_with_raw_betas() -> None:
    model, x = small_classifier(2), small_input(2, batch=2, size=12, seed=3)
    classes = [1, 2]
    target = medcam.ClassTarget(classes)
    exp = medcam.explain(model, x, "fusioncam", target=target, layers="features", variant="paper", normalize=None)
    l_g = medcam.explain(model, x, "gradcam", target=target, layers="features").map.numpy()
    l_r = medcam.explain(model, x, "scorecam", target=target, layers="features").map.numpy()
    xn = x.numpy()

    def beta(cam: np.ndarray) -> np.ndarray:
        return _f(model, torch.from_numpy(cam[:, None] * xn), classes) - _f(model, torch.zeros_like(x), classes)

    threshold = np.percentile(l_g.reshape(2, -1), 10.0, axis=1)
    l_d = np.where(l_g >= _col(threshold, l_g), l_g, 0.0)
    b_d, b_r = beta(l_d), beta(l_r)
    l_gr = _col(b_d, l_d) * l_d + _col(b_r, l_r) * l_r
    l1, l2 = _col(beta(l_gr), l_gr) * l_gr, _col(b_r, l_r) * l_r
    s = 1 - np.abs(l1 - l2)
    expected = s * np.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2
    np.testing.assert_allclose(exp.map.numpy(), expected, atol=TOL)
    assert exp.stats["variant"] == "paper"
