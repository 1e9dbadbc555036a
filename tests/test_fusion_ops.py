"""Pure steps of Fusion-CAM and Union-CAM against hand-computed small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcam.core.combine import (
    contribution_weights,
    denoise_below_percentile,
    denoise_gradients,
    percentile,
    similarity_fusion,
)
from medcam.errors import UserError


def test_percentile_interpolates_like_numpy() -> None:
    values = torch.tensor([[3.0, 0.0, 9.0, 1.0, 4.0, 2.0, 8.0, 5.0, 7.0, 6.0]])
    # sorted 0..9, position 0.1 * 9 = 0.9 -> 0 + 0.9 * (1 - 0) = 0.9
    assert percentile(values, 10).item() == pytest.approx(0.9)
    assert percentile(values, 0).item() == 0.0
    assert percentile(values, 100).item() == 9.0
    assert percentile(values, 50).item() == pytest.approx(4.5)
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 7)).astype(np.float32)
    for q in (10, 37.5, 90):
        ours = percentile(torch.from_numpy(maps), q).squeeze().numpy()
        np.testing.assert_allclose(ours, np.percentile(maps.reshape(3, -1), q, axis=1), rtol=1e-6)


def test_percentile_per_channel_keeps_dims() -> None:
    values = torch.arange(24.0).view(1, 2, 3, 4)
    result = percentile(values, 50, start_dim=2)
    assert result.shape == (1, 2, 1, 1)
    assert result.flatten().tolist() == [5.5, 17.5]


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(UserError, match=r"\[0, 100\]"):
        percentile(torch.zeros(1, 4), 120)


def test_denoising_removes_the_bottom_theta_percent() -> None:
    # a 2x5 map with values 0.1 .. 1.0; the 10th percentile is 0.1 + 0.9 * 0.1 = 0.19
    cam = torch.tensor([[[0.6, 0.1, 1.0, 0.2, 0.4], [0.3, 0.9, 0.5, 0.8, 0.7]]])
    expected10 = torch.tensor([[[0.6, 0.0, 1.0, 0.2, 0.4], [0.3, 0.9, 0.5, 0.8, 0.7]]])
    assert torch.equal(denoise_below_percentile(cam, 10), expected10)
    # 30th percentile: 0.3 + 0.7 * 0.1 = 0.37, so 0.1, 0.2 and 0.3 become 0
    expected30 = torch.tensor([[[0.6, 0.0, 1.0, 0.0, 0.4], [0.0, 0.9, 0.5, 0.8, 0.7]]])
    assert torch.equal(denoise_below_percentile(cam, 30), expected30)
    assert torch.equal(denoise_below_percentile(cam, 0), cam)


def test_denoising_is_per_sample() -> None:
    cams = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0]])
    # 25th percentile: 2.0 and 20.0 (kept, equal to T); 1.0 and 10.0 removed
    assert denoise_below_percentile(cams, 25).tolist() == [[0.0, 2.0, 3.0, 4.0, 5.0], [0.0, 20.0, 30.0, 40.0, 50.0]]


def test_union_gradient_denoising_is_per_channel() -> None:
    grads = torch.tensor([[[-3.0, 1.0, 2.0, 5.0, 4.0], [10.0, -1.0, 0.0, 2.0, 3.0]]])
    # 20th percentile per channel: [-3,1,2,4,5] -> -3 + 0.8 * 4 = 0.2 ; [-1,0,2,3,10] -> -1 + 0.8 * 1 = -0.2
    expected = torch.tensor([[[0.0, 1.0, 2.0, 5.0, 4.0], [10.0, 0.0, 0.0, 2.0, 3.0]]])
    assert torch.equal(denoise_gradients(grads, 20), expected)


def test_contribution_weights_normalise_to_one() -> None:
    b_d, b_r = contribution_weights(torch.tensor([0.3]), torch.tensor([0.1]))
    assert b_d.item() == pytest.approx(0.75)
    assert b_r.item() == pytest.approx(0.25)


def test_contribution_weights_both_zero_split_evenly() -> None:
    b_d, b_r = contribution_weights(torch.tensor([0.0]), torch.tensor([0.0]))
    assert (b_d.item(), b_r.item()) == (0.5, 0.5)


def test_contribution_weights_clamp_negative_scores() -> None:
    # one negative: it gets weight 0, the other all of it (no flipped map)
    b_d, b_r = contribution_weights(torch.tensor([-0.2]), torch.tensor([0.05]))
    assert (b_d.item(), b_r.item()) == (0.0, 1.0)
    # both negative: as if both were 0
    b_d, b_r = contribution_weights(torch.tensor([-0.2]), torch.tensor([-0.4]))
    assert (b_d.item(), b_r.item()) == (0.5, 0.5)


def test_contribution_weights_are_per_sample() -> None:
    b_d, b_r = contribution_weights(torch.tensor([0.2, 0.0, -1.0]), torch.tensor([0.6, 0.0, 0.5]))
    assert b_d.tolist() == pytest.approx([0.25, 0.5, 0.0])
    assert b_r.tolist() == pytest.approx([0.75, 0.5, 1.0])


def test_similarity_fusion_hand_computed() -> None:
    l1 = torch.tensor([[0.0, 0.5, 1.0, 0.2]])
    l2 = torch.tensor([[0.0, 0.5, 0.0, 0.6]])
    fused, agreement = similarity_fusion(l1, l2)
    # S = 1 - |l1 - l2| = [1, 1, 0, 0.6]
    assert agreement[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.6])
    # S max + (1 - S) mean: [0, 0.5, 0.5, 0.6 * 0.6 + 0.4 * 0.4 = 0.52]
    assert fused[0].tolist() == pytest.approx([0.0, 0.5, 0.5, 0.52])


def test_similarity_is_clipped_for_maps_beyond_unit_range() -> None:
    fused, agreement = similarity_fusion(torch.tensor([[2.0]]), torch.tensor([[0.0]]))
    assert agreement.item() == 0.0
    assert fused.item() == 1.0  # the mean when the maps disagree completely


def test_paper_fusion_hand_computed() -> None:
    from medcam.core.combine import paper_fusion

    denoised, region = torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[1.0, 0.5, 0.0]])
    beta_d, beta_r, beta_gr = torch.tensor([0.4]), torch.tensor([0.2]), torch.tensor([0.5])
    combined, _, _ = paper_fusion(denoised, region, beta_d, beta_r)
    torch.testing.assert_close(combined, torch.tensor([[0.2, 0.3, 0.4]]))  # Eq. 3, raw betas, no normalisation
    combined, fused, agreement = paper_fusion(denoised, region, beta_d, beta_r, beta_gr)
    # L1 = 0.5 L_gr = [0.1, 0.15, 0.2], L2 = 0.2 L_r = [0.2, 0.1, 0]
    torch.testing.assert_close(agreement, torch.tensor([[0.9, 0.95, 0.8]]))
    torch.testing.assert_close(fused, torch.tensor([[0.195, 0.14875, 0.18]]))


def test_agreement_fusion_hand_computed() -> None:
    from medcam.core.combine import agreement_fusion

    first, second = torch.tensor([[0.9, 0.0, 0.0]]), torch.tensor([[0.1, 0.0, 0.6]])
    fused, agreement = agreement_fusion(first, second)
    # S = [0.2, 1, 0.4]; disagreement keeps the lower value
    torch.testing.assert_close(fused, torch.tensor([[0.26, 0.0, 0.24]]))
    torch.testing.assert_close(agreement, torch.tensor([[0.2, 0.0, 0.4]]))  # 0 where neither map has support


def test_union_denoising_on_positive_gradients_changes_a_channel_the_paper_step_leaves_alone() -> None:
    grads = torch.tensor([-1.0, -0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).view(1, 1, 11)
    assert torch.equal(denoise_gradients(grads, 10).clamp_min(0), grads.clamp_min(0))  # percentile <= 0
    positive = denoise_gradients(grads, 10, positive=True)
    # the 10th percentile of [0.1 .. 0.8] is 0.17: 0.1 is dropped, negatives and zeros are 0
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]).view(1, 1, 11)
    torch.testing.assert_close(positive, expected)


@pytest.mark.parametrize("block", [1000, 999])
def test_fusions_of_large_maps_in_blocks_are_the_same_values(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Whole-CT maps are fused block by block (bounded temporaries): bit for bit the one-shot result."""
    import medcam.core.combine as combine

    generator = torch.Generator().manual_seed(1)
    first = (torch.rand(2, 30, 40, 50, generator=generator) * 1.7 - 0.3).clamp_min(0)
    second = (torch.rand(2, 30, 40, 50, generator=generator) * 1.2 - 0.1).clamp_min(0)
    whole = [combine.similarity_fusion(first, second), combine.agreement_fusion(first, second)]
    monkeypatch.setattr(combine, "FUSION_BLOCK", block)  # 120000 elements: 120 or 121 blocks, the last short
    parts = [combine.similarity_fusion(first, second), combine.agreement_fusion(first, second)]
    for (fused, agreement), (fused_b, agreement_b) in zip(whole, parts, strict=True):
        assert torch.equal(fused, fused_b) and torch.equal(agreement, agreement_b)
