"""nnU-Net v2 trained-model folders: safe checkpoint reading, folds, labels, refusals, parity of the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunet_folders import REGION_LABELS, REGION_ORDER, write_results

from medcam.errors import UserError
from medcam.models.nnunet import (
    FoldEnsemble,
    MirrorEnsemble,
    NNUNetBundle,
    NNUNetError,
    is_nnunet_folder,
    load_nnunet,
    read_nnunet_checkpoint,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of a label-based 3d_fullres model (final and best checkpoints)."""
    return write_results(tmp_path_factory.mktemp("nnunet"), best=True)


@pytest.fixture(scope="module")
def region_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(
        tmp_path_factory.mktemp("nnunet_regions"), labels=REGION_LABELS, order=REGION_ORDER, folds=(0,)
    )


def test_checkpoint_needs_the_numpy_allow_list_and_keeps_only_weights(results: Path) -> None:
    path = results / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match=r"numpy"):  # plain weights_only refuses nnU-Net's log scalars
        torch.load(path, weights_only=True)
    ckpt = read_nnunet_checkpoint(path)
    assert ckpt.trainer == "nnUNetTrainer" and ckpt.configuration == "3d_fullres"
    assert ckpt.mirror_axes == (0, 1, 2)
    assert all(isinstance(v, torch.Tensor) for v in ckpt.weights.values())
    assert "encoder.stages.0.0.convs.0.conv.weight" in ckpt.weights


class _Payload:
    """An object whose unpickling writes a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.write_text, (self.marker, "code ran"))


def test_hostile_checkpoint_is_refused_without_running_code(tmp_path: Path, results: Path) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(results, folder)
    marker = tmp_path / "pwned.txt"
    payload = torch.load(results / "fold_0" / "checkpoint_final.pth", weights_only=False)
    payload["logging"]["evil"] = _Payload(marker)
    hostile = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(payload, hostile)
    with pytest.raises(NNUNetError, match=r"refuses to load") as err:
        load_nnunet(folder, folds="0")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # the file really runs code when unpickled freely
    assert marker.read_text() == "code ran"


def test_folder_folds_and_checkpoints(results: Path) -> None:
    assert is_nnunet_folder(results) and is_nnunet_folder(results.parent)
    bundle = load_nnunet(results)
    assert isinstance(bundle, NNUNetBundle) and bundle.preprocessing_by == "nnunet"
    assert bundle.source is not None and bundle.source.folds == ("0", "1")
    assert isinstance(bundle.model, FoldEnsemble) and len(bundle.model.folds) == 2
    assert bundle.meta.labels == {"background": 0, "kidney": 1, "tumor": 2}
    assert bundle.meta.activation == "softmax" and bundle.meta.patch_size == (16, 16, 16)
    one = load_nnunet(results, folds=[1], checkpoint="best")
    assert isinstance(one.model, MirrorEnsemble) and one.source is not None and one.source.checkpoint == "best"
    from_file = load_nnunet(results / "fold_1" / "checkpoint_best.pth")
    assert from_file.source is not None and from_file.source.folds == ("1",) and from_file.source.checkpoint == "best"
    with pytest.raises(NNUNetError, match=r"no fold_3/checkpoint_final.pth \(folds present: 0, 1\)"):
        load_nnunet(results, folds="3")
    with pytest.raises(NNUNetError, match=r"'final' or 'best'"):
        load_nnunet(results, checkpoint="latest")


def test_fold_mean_matches_each_fold_network(results: Path) -> None:
    bundle = load_nnunet(results)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        mean = bundle.model(x)
        folds = [load_nnunet(results, folds=[f]).model(x) for f in (0, 1)]
    torch.testing.assert_close(mean, (folds[0] + folds[1]) / 2)


def test_network_equals_nnunet_predictors_network(results: Path) -> None:
    """Same weights, same architecture: the output equals the network nnU-Net's own predictor builds."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results), use_folds=(1,))
    ours = load_nnunet(results, folds=[1], mirroring=False).model
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), predictor.network.eval()(x))
    # with mirroring: nnU-Net's own test-time mirroring of the same network (its 8 flips in 3D)
    mirrored = load_nnunet(results, folds=[1]).model
    assert isinstance(mirrored, MirrorEnsemble) and len(mirrored.flips) == 8
    predictor.use_mirroring = True
    torch.testing.assert_close(mirrored(x), predictor._internal_maybe_mirror_and_predict(x))
    assert not torch.allclose(mirrored(x), ours(x))


def test_regions_are_named_from_dataset_json(region_results: Path) -> None:
    bundle = load_nnunet(region_results)
    assert bundle.meta.activation == "sigmoid"
    assert bundle.meta.labels == {"kidney": 0, "masses": 1, "tumor": 2}
    assert bundle.source is not None and bundle.source.labels.paint == (1, 3, 2)


def test_parent_folder_with_several_configurations(tmp_path: Path) -> None:
    write_results(tmp_path, folds=(0,), configuration="3d_fullres")
    write_results(tmp_path, folds=(0,), configuration="3d_lowres")
    dataset = tmp_path / "Dataset901_Tiny"
    with pytest.raises(NNUNetError, match=r"several trained models .* --configuration"):
        load_nnunet(dataset)
    bundle = load_nnunet(dataset, configuration="3d_lowres")
    assert bundle.source is not None and bundle.source.configuration == "3d_lowres"
    with pytest.raises(NNUNetError, match=r"no nnU-Net trained-model folder .*'2d'"):
        load_nnunet(dataset, configuration="2d")


def test_cascade_is_refused(tmp_path: Path) -> None:
    folder = write_results(tmp_path, folds=(0,), configuration="3d_cascade_fullres", cascade=True)
    with pytest.raises(NNUNetError, match=r"cascade configuration '3d_cascade_fullres'.*3d_lowres"):
        load_nnunet(folder)


def test_plans_naming_other_code_are_refused(tmp_path: Path, results: Path) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(results, folder)
    plan = json.loads((folder / "plans.json").read_text())
    arch = plan["configurations"]["3d_fullres"]["architecture"]
    arch["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match=r"nonlin = 'os.system' is not a torch.nn class"):
        load_nnunet(folder)
    arch["arch_kwargs"]["nonlin"] = "torch.nn.LeakyReLU"
    arch["network_class_name"] = "subprocess.Popen"
    (folder / "plans.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match=r"'subprocess.Popen' is not from dynamic_network_architectures"):
        load_nnunet(folder)


def test_missing_pieces_are_one_line_errors(tmp_path: Path, results: Path) -> None:
    folder = tmp_path / "trained"
    shutil.copytree(results, folder)
    (folder / "dataset.json").unlink()
    with pytest.raises(NNUNetError, match=r"dataset.json is missing"):
        load_nnunet(folder)
    with pytest.raises(NNUNetError, match=r"does not exist"):
        load_nnunet(tmp_path / "nowhere")


def test_checkpoint_pickled_under_numpy_1_names(tmp_path: Path) -> None:
    """numpy 1.x pickles scalars as numpy.core.multiarray.scalar: allowed under that name too."""
    import io
    import zipfile

    import numpy as np

    buffer = io.BytesIO()
    torch.save({"network_weights": {"w": torch.ones(2)}, "logging": {"dice": [np.float64(0.5)]}}, buffer)
    old = tmp_path / "checkpoint_final.pth"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(old, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("data.pkl"):
                assert b"cnumpy._core.multiarray\nscalar\n" in data
                data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
            target.writestr(name, data)
    with pytest.raises(Exception, match=r"numpy\.core\.multiarray\.scalar"):
        torch.load(old, weights_only=True)
    torch.testing.assert_close(read_nnunet_checkpoint(old).weights["w"], torch.ones(2))


def test_compressed_checkpoint_is_refused_before_loading(tmp_path: Path, results: Path) -> None:
    import zipfile

    from medcam.models.checkpoint import CheckpointError

    folder = tmp_path / "trained"
    shutil.copytree(results, folder)
    path = folder / "fold_0" / "checkpoint_final.pth"
    with zipfile.ZipFile(path) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name, data in entries.items():
            target.writestr(name, data)
    with pytest.raises(CheckpointError, match="compressed zip archive"):
        load_nnunet(folder, folds="0")
