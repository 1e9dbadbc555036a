"""Segmentation faithfulness metrics: known answers, controls, normalisation, Quantus parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from region_nets import Splitter, small_classifier, small_input
from torch import Tensor, nn

import medcam
from medcam.errors import UserError
from medcam.evaluate import EvaluationSettings, Sample, read_results, run_evaluation
from medcam.evaluate.summary import summary_markdown, with_normalised_scores
from medcam.metrics.region_faithfulness import (
    keep_remove_top_k,
    normalised,
    random_map,
    scaled_deletion_insertion,
)

SIZE = 12


class MeanSourceNet(nn.Module):
    """A 2D two-class segmenter with a known answer.

    The class-1 logit inside ``out`` is ``gain x (mean of the input over source - 0.5)``,
    -5 elsewhere: the evidence for M = ``out`` is exactly the ``source`` square, every
    source pixel counts equally, and the air baseline (0) removes it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.source = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        self.source[1:5, 1:5] = True
        self.out = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        self.out[7:11, 7:11] = True
        self.conv = nn.Conv2d(1, 1, 1)  # a parameter, so the metrics find the device
        nn.init.ones_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        mean = self.conv(x)[:, 0][:, self.source].mean(dim=1)
        logit = torch.full_like(x[:, 0], -5.0)
        logit = torch.where(self.out, (8.0 * (mean - 0.5)).view(-1, 1, 1), logit)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def answer() -> tuple[MeanSourceNet, Tensor, medcam.SegmentationTarget]:
    net = MeanSourceNet().eval()
    x = torch.ones(1, 1, SIZE, SIZE)
    return net, x, medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out))


def test_truth_scores_best_and_random_worst_on_a_known_answer_net() -> None:
    net, x, target = answer()
    truth = net.source.float().unsqueeze(0)
    noise = random_map(truth, seed=3)
    wrong = net.out.float().unsqueeze(0)  # M itself: the prediction's location, not its evidence
    scores = {}
    for name, maps in (("truth", truth), ("random", noise), ("wrong", wrong)):
        top = keep_remove_top_k(net, x, maps, target, baseline="zeros", seed=1)
        curves = scaled_deletion_insertion(net, x, maps, target, baseline="zeros", steps=4, seed=1)
        scores[name] = (top, curves)
    top_t, curves_t = scores["truth"]
    top_r, curves_r = scores["random"]
    assert top_t.unit.tolist() == [16]  # |M|
    assert float(top_t.keep_score[0]) > float(top_r.keep_score[0]) + 0.2
    assert float(top_t.remove_score[0]) < float(top_r.remove_score[0]) - 0.2
    assert float(curves_t.deletion_auc[0]) < float(curves_r.deletion_auc[0])
    assert float(curves_t.insertion_auc[0]) > float(curves_r.insertion_auc[0])
    assert float(curves_t.insertion_start[0]) < 0.05  # the air baseline scores ~0
    # keeping all 16 source pixels (k = |M|) restores the clean score exactly
    assert float(top_t.keep[0, 1]) == pytest.approx(float(top_t.original[0]), abs=1e-6)
    # a map on M instead of its evidence scores far below the truth
    assert float(scores["wrong"][0].keep_score[0]) < float(top_t.keep_score[0]) - 0.2
    norm = normalised(top_r.keep_score, top_r.keep_score, top_t.keep_score)
    assert float(norm[0]) == 0.0
    assert float(normalised(top_t.keep_score, top_r.keep_score, top_t.keep_score)[0]) == 1.0
    # lower-is-better scores normalise the same way: truth 1, random 0
    assert float(normalised(top_t.remove_score, top_r.remove_score, top_t.remove_score)[0]) == 1.0


def test_region_methods_score_between_the_controls_on_the_known_answer_net() -> None:
    net, x, target = answer()
    x = x + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    truth = net.source.float().unsqueeze(0)
    exp = medcam.explain(net, x, "hirescam", target=target, layers="conv")
    keep = {
        name: float(keep_remove_top_k(net, x, maps, target, baseline="zeros").keep_score[0])
        for name, maps in (("truth", truth), ("random", random_map(truth)), ("hirescam", exp.map))
    }
    # HiResCAM orders the source by brightness, the binary truth mask at random: at least as good
    assert keep["random"] + 0.2 < keep["truth"] <= keep["hirescam"] + 0.01


def test_classifiers_need_an_explicit_unit() -> None:
    model, x = small_classifier(2), small_input(2)
    maps = random_map(torch.zeros(1, 12, 12))
    with pytest.raises(UserError, match="unit"):
        keep_remove_top_k(model, x, maps, 1)
    assert keep_remove_top_k(model, x, maps, 1, unit=10).keep.shape == (1, 4)


def test_deletion_matches_quantus_pixel_flipping() -> None:
    """Parity: with k = j x unit voxels per step and the min ('black') baseline, our deletion
    curve after each step equals Quantus' PixelFlipping curve (tolerance 1e-6)."""
    quantus = pytest.importorskip("quantus")
    model, x = small_classifier(2), small_input(2, batch=2, size=12, seed=5)
    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(9))  # no ties
    classes = [0, 2]
    step, steps = 8, 18  # 144 pixels
    ours = scaled_deletion_insertion(
        model, x, maps, medcam.ClassTarget(classes), unit=step, extent=steps, steps=steps, baseline="min"
    )
    metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", disable_warnings=True)
    theirs = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=np.array(classes),
        a_batch=maps.unsqueeze(1).numpy(),
        device="cpu",
        softmax=True,
    )
    np.testing.assert_allclose(ours.deletion[:, 1:].numpy(), np.array(theirs), atol=1e-6)


def test_evaluate_writes_controls_and_normalised_scores(tmp_path) -> None:
    settings = EvaluationSettings.from_mapping(
        {
            "methods": [{"name": "hirescam", "layers": "conv"}],
            "metrics": ["average_drop", "region_faithfulness", "localisation"],
            "region_faithfulness": {"steps": 2, "multiples": [1, 2]},
        }
    )
    bright = torch.zeros(1, 12, 12)
    bright[0, 3:7, 3:7] = 1.0
    samples = [Sample("lesion", bright, target=medcam.SegmentationTarget(1), truth=bright[0] > 0)]
    run_evaluation(Splitter(), samples, settings, tmp_path, report=False)  # no plots: faster
    rows = {r["method"]: r for r in read_results(tmp_path)}
    assert set(rows) == {"control: random map", "control: truth mask", "hirescam"}
    assert all(rows[k]["keep_topk"] != "" for k in rows)
    summary = summary_markdown(read_results(tmp_path), settings)
    assert "not meaningful for segmentation" in summary
    assert "normalised" in summary and "control: truth mask" in summary
    scored = {r["method"]: r for r in with_normalised_scores(read_results(tmp_path))}
    assert float(scored["control: truth mask"]["keep_norm"]) == 1.0
    assert float(scored["control: random map"]["keep_norm"]) == 0.0


def test_robustcam_reports_held_out_stability_against_its_base() -> None:
    from region_nets import RegionAnswerNet, answer_input

    net, x = RegionAnswerNet(size=12, block=3).eval(), answer_input(size=12)
    target = medcam.SegmentationTarget(1, pixels=medcam.Mask(net.out[0]))
    views = ["rotate:5:1,2:fill=min", "blur:0.6"]
    exp = medcam.explain(net, x, "robustcam", target=target, layers="features", held_out=views)
    held = exp.stats["held_out"]["features"]
    assert held["views"] == views and held["top_k"] == [216]  # k = |M|
    for part in ("base", "robustcam"):
        assert 0 <= held[part]["variance"][0] < 0.05 and held[part]["spearman"][0] > 0.5
    # fusing views steadies the map on this net
    assert held["robustcam"]["variance"][0] <= held["base"]["variance"][0]
