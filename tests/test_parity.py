"""Parity of the gradient methods with independent implementations.

pytorch-grad-cam and captum run their own hooks and backward passes; the 3D case is
checked against a hand-written autograd reference that splits the network by hand.
Tolerance 1e-5 on maps normalised to [0, 1] (float32 arithmetic, different op order).

The layers are intermediate ones on purpose: right before global average pooling the
gradient is spatially constant, so Grad-CAM, HiResCAM and CAM coincide there and a
parity test could not tell them apart (``test_methods_differ_at_the_parity_layer``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from nets import seeded_input, tiny_classifier

import medcam

TOL = 1e-5


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    return model, x


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - a.min(axis=(-2, -1), keepdims=True)
    return a / a.max(axis=(-2, -1), keepdims=True)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("gradcam", "GradCAM"), ("hirescam", "HiResCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM")],
)
def test_matches_pytorch_grad_cam(resnet18, ours: str, theirs: str) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = resnet18
    classes = [281, 7]
    with getattr(pytorch_grad_cam, theirs)(model=model, target_layers=[model.layer3]) as cam:
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam runs backward() on the model
    exp = medcam.explain(model, x, ours, target=medcam.ClassTarget(classes), layers="layer3")
    ours_map = exp.map.numpy()
    # pytorch-grad-cam normalises with an epsilon (x / (max + 1e-7)); renormalise exactly
    np.testing.assert_allclose(ours_map, _minmax(reference), atol=TOL)


def test_gradcam_matches_captum_layer_gradcam(resnet18) -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    model, x = resnet18
    attribution = LayerGradCam(model, model.layer3).attribute(x, target=281, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(attribution, (128, 128), interpolate_mode="bilinear")
    reference = _minmax(upsampled.detach().squeeze(1).numpy())
    model.zero_grad(set_to_none=True)
    ours = medcam.explain(model, x, "gradcam", target=281, layers="layer3").map.numpy()
    np.testing.assert_allclose(ours, reference, atol=TOL)


def test_methods_differ_at_the_parity_layer(resnet18) -> None:
    model, x = resnet18
    maps = {m: medcam.explain(model, x, m, target=281, layers="layer3").map for m in ("gradcam", "hirescam")}
    assert (maps["gradcam"] - maps["hirescam"]).abs().max() > 0.5


def _reference_3d(model: torch.nn.Module, x: torch.Tensor, cls: int, method: str) -> torch.Tensor:
    """Grad-CAM family in 3D, written out: split the net by hand, autograd, formula.

    Gradient methods at ``features.2`` (first conv block), CAM at ``features`` (before GAP).
    """
    model.eval()
    split = 6 if method == "cam" else 3
    acts = model.features[:split](x)
    logits = model.fc(model.pool(model.features[split:](acts)).flatten(1))
    (grads,) = torch.autograd.grad(logits[:, cls].sum(), acts)
    acts, grads = acts.detach(), grads.detach()
    if method == "gradcam":
        raw = (grads.mean(dim=(2, 3, 4), keepdim=True) * acts).sum(1)
    elif method == "hirescam":
        raw = (grads * acts).sum(1)
    elif method == "xgradcam":
        w = (grads * acts).sum(dim=(2, 3, 4), keepdim=True) / (acts.sum(dim=(2, 3, 4), keepdim=True) + 1e-7)
        raw = (w * acts).sum(1)
    elif method == "gradcam++":
        g2, g3 = grads**2, grads**3
        alpha = g2 / (2 * g2 + acts.sum(dim=(2, 3, 4), keepdim=True) * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, 0.0)
        raw = ((alpha * grads.clamp_min(0)).sum(dim=(2, 3, 4), keepdim=True) * acts).sum(1)
    else:  # cam: final linear weights
        raw = (model.fc.weight[cls].detach().view(1, -1, 1, 1, 1) * acts).sum(1)
    up = F.interpolate(raw.clamp_min(0)[:, None], size=x.shape[2:], mode="trilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2, 3), keepdim=True)
    return (up - lo) / (up.amax(dim=(1, 2, 3), keepdim=True) - lo)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "xgradcam", "cam"])
def test_3d_matches_hand_written_reference(method: str) -> None:
    model = tiny_classifier(3)
    x = seeded_input(3, batch=2, size=12)
    layer = "features" if method == "cam" else "features.2"
    ours = medcam.explain(model, x, method, target=2, layers=layer).map
    torch.testing.assert_close(ours, _reference_3d(model, x, 2, method), atol=TOL, rtol=0)
