"""nnU-Net folds one at a time: the map of the fold-mean logit without every fold in memory.

The fold ensemble keeps one fold's weights in memory (the others are skeletons on the
meta device); prediction and the gradient CAM run fold by fold. Checked against an
independent all-folds-in-memory computation (tolerance 1e-6 relative: the same float32
operations in the same order, so in practice bit for bit), and by watching the weight
storages: when a fold loads, no other fold's weights are still alive.
"""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("nnunetv2")

from nnunet_folders import write_case, write_results

import medcam.models.nnunet as nnunet_models
from medcam.core.targets import SegmentationTarget
from medcam.methods.base import PostProcessing
from medcam.methods.registry import create_method
from medcam.models.nnunet import load_nnunet
from medcam.models.nnunet_ensembles import FoldEnsemble, MirrorEnsemble
from medcam.pipeline.nnunet import NNUNetWindow, fold_cam, predict_nnunet
from medcam.pipeline.windows import sliding_window_cam

RAW = PostProcessing(relu=False, normalization=None)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(tmp_path_factory.mktemp("results"), folds=(0, 1, 2))


class _AllFolds(nn.Module):
    """The fold mean with every fold in memory: what medcam held before folds loaded one at a time."""

    def __init__(self, folds: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [f(x) for f in self.folds]
        total = outputs[0]
        for out in outputs[1:]:
            total = total + out
        return total / len(outputs)


class _Unflipped(nn.Module):
    """A mirrored copy's layer, its output shown to a hook in the input's orientation (``seen``)."""

    def __init__(self, layer: nn.Module, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.layer, self.dims, self.seen = layer, dims, nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.flip(self.seen(torch.flip(self.layer(x), self.dims)), self.dims)


def _singles(model: Path, folds: tuple[int, ...], mirroring: bool) -> list[nn.Module]:
    """Each fold loaded on its own (a one-fold model keeps its weights in memory)."""
    return [load_nnunet(model, folds=[k], mirroring=mirroring).model for k in folds]


def _stitched_mean(networks: list[nn.Module], x: Tensor, window: NNUNetWindow) -> Tensor:
    """nnU-Net's fold average of stitched logits (float16 sums, as its predictor)."""
    parts = [predict_nnunet(n, x, window).half() for n in networks]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return (total / len(parts)).float()


def _by_hand(networks: list[nn.Module], x: Tensor, inner: str, method: str, prediction: Tensor) -> Tensor:
    """Every fold's and mirror's copy of the layer hooked in one ensemble with all folds loaded; maps added."""
    layers = {}
    for k, network in enumerate(networks):
        if not isinstance(network, MirrorEnsemble):
            layers[f"{k}"] = f"folds.{k}.{inner}"
            continue
        for m, dims in enumerate(network.flips):
            parent, _, name = f"mirrors.{m}.{inner}".rpartition(".")
            owner = network.get_submodule(parent)
            if dims:
                setattr(owner, name, _Unflipped(getattr(owner, name), dims))
            layers[f"{k}.{m}"] = f"folds.{k}.mirrors.{m}.{inner}" + (".seen" if dims else "")
    bound = SegmentationTarget(2, pixels="image").bind(prediction)
    window = NNUNetWindow((16, 16, 16))
    found = sliding_window_cam(
        _AllFolds(networks), x, create_method(method), bound, layers, window, post=RAW, prediction=prediction
    ).maps
    maps = [found[alias] for alias in layers]
    total = maps[0]
    for part in maps[1:]:
        total = total + part
    return total


@pytest.mark.parametrize(("mirroring", "method"), [(False, "hirescam"), (True, "gradcam")])
def test_fold_by_fold_map_equals_all_folds_in_memory(model: Path, mirroring: bool, method: str) -> None:
    folds = (0, 1, 2)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 20, 18, 16)
    window = NNUNetWindow((16, 16, 16))
    bundle = load_nnunet(model, mirroring=mirroring)
    assert isinstance(bundle.model, FoldEnsemble) and bundle.model.lazy
    prediction = predict_nnunet(bundle.model, x, window)
    singles = _singles(model, folds, mirroring)
    torch.testing.assert_close(prediction, _stitched_mean(singles, x, window), rtol=0, atol=0)
    bound = SegmentationTarget(2, pixels="image").bind(prediction)
    inner = "encoder.stages.1"
    layer = f"folds.0.mirrors.0.{inner}" if mirroring else f"folds.0.{inner}"
    cam = create_method(method)
    ours = fold_cam(bundle.model, x, cam, bound, {"l": layer}, window, post=RAW, prediction=prediction)
    assert ours.stats["copies_summed"] == len(folds) * (8 if mirroring else 1)
    expected = _by_hand(singles, x, inner, method, prediction)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.maps["l"], expected, rtol=1e-6, atol=1e-6 * scale)


class _Watch:
    """Wraps ``load_fold``: when a fold loads, no weight storage of an earlier load may still be alive."""

    def __init__(self, load: Any) -> None:
        self.load = load
        self.storages: list[weakref.ref[torch.UntypedStorage]] = []
        self.loads = 0
        self.most_alive = 0

    def __call__(self, network: nn.Module, path: Path, flat: bool, read: Any = None) -> None:
        gc.collect()
        alive = sum(ref() is not None for ref in self.storages)
        self.most_alive = max(self.most_alive, alive)
        self.load(network, path, flat, read)
        self.loads += 1
        # every tensor of this load; a later load must find all of them freed
        self.storages = [weakref.ref(t.untyped_storage()) for t in network.state_dict().values()]


def test_at_most_one_fold_is_in_memory_while_explaining(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medcam.pipeline import explain_volume

    watch = _Watch(nnunet_models.load_fold)
    monkeypatch.setattr(nnunet_models, "load_fold", watch)
    case = write_case(tmp_path / "images")
    bundle = load_nnunet(model)  # three folds, mirroring on: every fold checked at load, then released
    assert watch.loads == 3 and watch.most_alive == 0
    assert isinstance(bundle.model, FoldEnsemble)
    assert all(p.is_meta for fold in bundle.model.folds for p in fold.parameters())
    explanation = explain_volume(case, class_name="tumor", model=bundle, method="hirescam", layer="levels:enc1,dec0")
    assert watch.most_alive == 0  # each fold's weights were freed before the next fold loaded
    assert watch.loads == 3 + 2 * 3  # the prediction and the CAM each loaded every fold once
    assert explanation.summary["sliding_window"]["copies_summed"] == 3 * 8
    assert all(p.is_meta for fold in bundle.model.folds for p in fold.parameters())


def test_resident_copy_and_device(model: Path) -> None:
    """A deep copy (what the sanity check's cascade changes) holds every fold; ``.to`` moves what is loaded."""
    bundle = load_nnunet(model, folds="0,1", mirroring=False)
    lazy = bundle.model
    assert isinstance(lazy, FoldEnsemble)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = lazy(x)
        copied = copy.deepcopy(lazy)
        assert isinstance(copied, FoldEnsemble) and not copied.lazy
        assert not any(p.is_meta for p in copied.parameters())
        torch.testing.assert_close(copied(x), expected, rtol=0, atol=0)
        assert lazy.to("cpu") is lazy and next(lazy.parameters()).device == torch.device("cpu")
        with lazy.resident():
            assert not any(p.is_meta for p in lazy.parameters())
            torch.testing.assert_close(lazy(x), expected, rtol=0, atol=0)
    assert all(p.is_meta for fold in lazy.folds for p in fold.parameters())
    # medcam.explain on the ensemble itself: each fold loads in turn, autograd keeps what the backward needs
    import medcam

    target = SegmentationTarget(2, pixels="image")
    layers = {"a": "folds.0.encoder.stages.1", "b": "folds.1.encoder.stages.1"}
    ours = medcam.explain(lazy, x, "hirescam", target, layers, relu=False, normalize=None)
    theirs = medcam.explain(copied, x, "hirescam", target, layers, relu=False, normalize=None)
    for alias in layers:
        torch.testing.assert_close(ours.maps[alias], theirs.maps[alias], rtol=0, atol=0)
