"""Gradient-based CAM methods: one forward and one backward pass for all layers.

With a :class:`~medcam.core.targets.SegmentationTarget` Grad-CAM is Seg-Grad-CAM
(Vinogradova et al. 2020) and HiResCAM is Seg-HiRes-Grad CAM (Rheude et al.).
Formulas: docs/methods.md; notation A_k activations, G_k = dS/dA_k.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medcam.core.ops import spatial_dims
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, Target
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, GradientMethod, MethodResult, PostProcessing


def _expand(weights: Tensor, like: Tensor) -> Tensor:
    """Channel weights ``(N, K)`` broadcast against ``(N, K, *spatial)``."""
    return weights.view(*weights.shape, *([1] * (like.ndim - 2)))


class GradCAM(GradientMethod):
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean_p G_k(p); L = sum_k w_k A_k."""

    name = "gradcam"

    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        weights = gradients.mean(dim=spatial_dims(gradients, channels=True))
        return (_expand(weights, activations) * activations).sum(dim=1)


class HiResCAM(GradientMethod):
    """HiResCAM (Draelos & Carin 2021): L = sum_k G_k * A_k, element-wise, no averaging."""

    name = "hirescam"

    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).sum(dim=1)


class GradCAMPlusPlus(GradientMethod):
    """Grad-CAM++ (Chattopadhyay et al. 2018), the closed form with G^2 and G^3.

    alpha = G^2 / (2 G^2 + sum_p A * G^3 + eps) where G != 0; w_k = sum_p alpha ReLU(G).
    """

    name = "gradcam++"
    eps = 1e-6

    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        dims = spatial_dims(gradients, channels=True)
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dim=dims, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * gradients.clamp_min(0)).sum(dim=dims)
        return (_expand(weights, activations) * activations).sum(dim=1)


class XGradCAM(GradientMethod):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_p G_k A_k / (sum_p A_k + eps)."""

    name = "xgradcam"
    eps = 1e-7

    def combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        dims = spatial_dims(gradients, channels=True)
        weights = (gradients * activations).sum(dim=dims) / (activations.sum(dim=dims) + self.eps)
        return (_expand(weights, activations) * activations).sum(dim=1)


class CAMError(UserError):
    """The model is not a global-average-pooling + linear classifier."""


class CAM(CAMMethod):
    """CAM (Zhou et al. 2016): L = sum_k W[c, k] A_k, W the final linear layer after GAP.

    Only defined for classifiers whose logits are exactly ``linear(GAP(A))``; that is
    checked numerically on the captured pass, and anything else is refused.
    """

    name = "cam"
    needs_gradients = False

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        capture = probe.capture(x, layers, target, gradients=False)
        if capture.target.is_segmentation:
            raise CAMError("CAM explains classifiers only; use gradcam or hirescam for a segmentation target")
        classes = capture.target.classes
        maps = {}
        for alias, acts in capture.activations.items():
            head = self._head(probe.model, acts.shape[1], alias)
            weights = head.weight.detach()[classes].to(acts.dtype)  # (N, K)
            pooled = acts.mean(dim=spatial_dims(acts, channels=True))
            expected = (pooled * weights).sum(dim=1)
            if head.bias is not None:
                expected = expected + head.bias.detach()[classes]
            actual = capture.output.gather(1, classes.view(-1, 1)).squeeze(1)
            if not torch.allclose(expected, actual, rtol=1e-3, atol=1e-4 * (1 + actual.abs().max().item())):
                raise CAMError(
                    f"the model output is not linear(global-average-pool({alias})), so CAM is not defined "
                    "at this layer; use the layer just before pooling, or gradcam"
                )
            maps[alias] = post.apply((_expand(weights, acts) * acts).sum(dim=1), tuple(x.shape[2:]))
        return MethodResult(maps, capture.target, capture.output)

    @staticmethod
    def _head(model: nn.Module, channels: int, alias: str) -> nn.Linear:
        heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not heads:
            raise CAMError(
                f"CAM needs a final nn.Linear with {channels} inputs after global average pooling of "
                f"{alias}; this model has none, so use gradcam"
            )
        return heads[-1]
