"""``medcam evaluate --config`` end to end on small synthetic sets written by medcam's generators.

A tiny seeded U-Net on KiTS-like phantoms (coarse 20 x 16 x 16 mm preprocessing, so a
phantom is 16 x 28 x 28 voxels on the model grid) and a ResNet-18 on IQ-OTH-like
slices at 64 px: the config is read, the samples are prepared with the checkpoint's
preprocessing, every method is scored, the report is written, an interrupted run
resumes, shards merge, and bad configs fail with one clear line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from volume_phantoms import kits_checkpoint

import medcam
import medcam.evaluate.runner as runner
from medcam.cli import main
from medcam.data.iqothnccd import IQOTH_CLASSES
from medcam.data.synthetic import write_iqothnccd_dataset, write_kits_dataset
from medcam.errors import UserError
from medcam.evaluate import read_results
from medcam.evaluate.config import load_config
from medcam.evaluate.samples import open_samples
from medcam.models.checkpoint import CheckpointMeta, Preprocessing, load_checkpoint, save_checkpoint
from medcam.models.factory import build_model

COARSE = Preprocessing(orientation="IPL", spacing=(20.0, 16.0, 16.0), a_min=-200.0, a_max=300.0)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three KiTS-layout phantoms (held-out seed) and a tiny 4-class U-Net checkpoint."""
    base = tmp_path_factory.mktemp("eval_kits")
    write_kits_dataset(base / "kits", 3, seed=5, shape=(16, 32, 32))
    model = kits_checkpoint(base / "unet.pt", preprocessing=COARSE, patch_size=None)
    return base / "kits", model


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """IQ-OTH-like slices (5 per class) and a seeded ResNet-18 checkpoint at 64 px."""
    base = tmp_path_factory.mktemp("eval_iqoth")
    write_iqothnccd_dataset(base / "iqoth", (5, 5, 5), seed=3, size=(64, 64))
    torch.manual_seed(0)
    arguments = {"num_classes": 3, "pretrained": False}
    meta = CheckpointMeta(
        architecture="torchvision.resnet18",
        arguments=arguments,
        task="classification",
        spatial_dims=2,
        in_channels=3,
        labels=dict(IQOTH_CLASSES),
        preprocessing=Preprocessing(a_min=0.0, a_max=255.0, size=(64, 64), mean=(0.5,) * 3, std=(0.25,) * 3),
        cam_layers=["layer3"],
    )
    save_checkpoint(base / "resnet18.pt", build_model("torchvision.resnet18", **arguments), meta)
    return base / "iqoth", base / "resnet18.pt"


def kits_config(root: Path, model: Path, out: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "title": "tiny phantoms",
        "model": {"checkpoint": str(model), "threads": 1},
        "data": {"kind": "kits23", "root": str(root), "split": None, "pad_to_multiple": 2},
        "target": {"class": "kidney", "pixels": "truth"},
        "evaluation": {
            "methods": ["gradcam", {"name": "hirescam", "label": "Seg-HiRes"}],
            "metrics": ["average_drop", "deletion_insertion", "localisation"],
            "faithfulness": {"steps": 4, "batch_size": 5},
        },
        "output": str(out),
    }
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def timeless(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {
        (r["sample"], r["method"]): {k: v for k, v in r.items() if k not in ("seconds", "warmup")}
        for r in read_results(folder)
    }


def test_samples_are_prepared_like_training_with_the_truth_on_the_map_grid(
    phantoms: tuple[Path, Path], tmp_path: Path
) -> None:
    root, model = phantoms
    config = load_config(write_config(tmp_path / "c.yaml", kits_config(root, model, tmp_path / "out")))
    samples = open_samples(config, load_checkpoint(model).meta)
    assert [samples.sample_id(i) for i in range(3)] == ["case_00000", "case_00001", "case_00002"]
    for i in range(3):
        sample = samples[i]
        assert sample.orientation == "IPL" and sample.truth is not None
        assert tuple(sample.truth.shape) == tuple(sample.image.shape[1:])
        assert all(s % 2 == 0 for s in sample.image.shape[1:]) and sample.image.shape[1] == 16  # 320 mm / 20 mm
        # the enhancing kidney (150-200 HU, window [-200, 300] -> [0, 1]) is where its label says
        inside, outside = sample.image[0][sample.truth].mean(), sample.image[0][~sample.truth].mean()
        assert inside > 0.55 and outside < 0.2
        exp = medcam.explain(load_checkpoint(model).model, sample.image[None], "gradcam", sample.target)
        assert exp.map.shape[1:] == sample.truth.shape
        assert torch.equal(exp.target.mask[0], sample.truth)  # pixels: truth -> M is the ground truth


def test_end_to_end_resume_after_an_interruption(
    phantoms: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, model = phantoms
    config = write_config(tmp_path / "c.yaml", kits_config(root, model, tmp_path / "default_out"))
    reference = tmp_path / "reference"
    assert main(["evaluate", "--config", str(config), "--out", str(reference), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "# tiny phantoms" in printed and "| Seg-HiRes |" in printed
    rows = read_results(reference)
    assert [(r["sample"], r["method"], r["status"]) for r in rows] == [
        (f"case_0000{i}", m, "ok") for i in range(3) for m in ("gradcam", "Seg-HiRes")
    ]
    assert all(r["box_iou"] != "" and r["deletion_auc"] != "" for r in rows)
    for name in ("summary.md", "curves.png", "metrics.png", "curves.csv", "evaluation.json"):
        assert (reference / name).is_file()
    assert not (tmp_path / "default_out").exists()  # --out wins over the config's output

    calls: list[str] = []
    real = runner._score

    def stop_after_three(*args: Any, **kwargs: Any) -> Any:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[1].id)
        return real(*args, **kwargs)

    folder = tmp_path / "interrupted"
    monkeypatch.setattr(runner, "_score", stop_after_three)
    assert main(["evaluate", "--config", str(config), "--out", str(folder), "--no-progress"]) == 130
    assert len(read_results(folder)) == 3 and not (folder / "summary.md").exists()
    monkeypatch.setattr(runner, "_score", lambda *a, **k: (calls.append(a[1].id), real(*a, **k))[1])
    assert main(["evaluate", "--config", str(config), "--out", str(folder), "--resume", "--no-progress"]) == 0
    assert calls[3:] == ["case_00001", "case_00002", "case_00002"]  # only the missing three
    assert timeless(folder) == timeless(reference)
    assert (folder / "summary.md").is_file()
    # another target in the same folder is refused; --overwrite starts again
    other = write_config(tmp_path / "other.yaml", kits_config(root, model, folder, target={"truth": "masses"}))
    assert main(["evaluate", "--config", str(other), "--no-progress"]) == 2
    assert "other model, data or target" in capsys.readouterr().err
    calls.clear()
    assert main(["evaluate", "--config", str(other), "--overwrite", "--samples", "1", "--no-progress"]) == 0
    assert len(calls) == 2 and len(read_results(folder)) == 2


def test_shards_then_merge_equal_one_process(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = phantoms
    changes = {"evaluation": {"methods": ["gradcam"], "metrics": ["localisation"]}}
    config = write_config(tmp_path / "c.yaml", kits_config(root, model, tmp_path / "x", **changes))
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    assert main(["evaluate", "--config", str(config), "--out", str(one), "--no-progress"]) == 0
    assert main(["evaluate", "--config", str(config), "--out", str(sharded), "--shard", "1/2", "--no-progress"]) == 0
    assert main(["evaluate", "--config", str(config), "--out", str(sharded), "--merge"]) == 2  # shard 0 missing
    assert main(["evaluate", "--config", str(config), "--out", str(sharded), "--shard", "0/2", "--no-progress"]) == 0
    assert main(["evaluate", "--config", str(config), "--out", str(sharded), "--merge"]) == 0
    assert timeless(sharded) == timeless(one)
    assert [r["sample"] for r in read_results(sharded)] == ["case_00000", "case_00001", "case_00002"]


def test_classifier_on_iqoth_slices(slices: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = slices
    # the split comes from the training config: 60/20/20 per class, seed 42 (RobustCAM's protocol)
    training = Path(__file__).parents[1] / "configs" / "iqothnccd_resnet50.yaml"
    config = {
        "model": {"checkpoint": str(model)},
        "data": {"training_config": str(training), "root": str(root), "split": "test"},
        "target": {"class": "label"},
        "evaluation": {
            "methods": [{"name": "gradcam", "layers": "layer3"}, {"name": "gradcam++", "layers": "layer3"}],
            "metrics": ["average_drop", "deletion_insertion"],
            "faithfulness": {"steps": 10},
        },
    }
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["evaluate", "--config", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    rows = read_results(tmp_path / "out")
    # 20 % of each class's 5 slices is the test split (seed 42): one per class, named by file, in split order
    ids = ["Normal case (1)", "Bengin case (5)", "Malignant case (4)"]
    assert [r["sample"] for r in rows] == [i for i in ids for _ in range(2)]
    assert {r["status"] for r in rows} == {"ok"}
    # the explained class is each slice's true class: the recorded score is its probability
    bundle = load_checkpoint(model)
    samples = open_samples(load_config(path), bundle.meta)
    first = samples[0]
    with torch.no_grad():
        probability = bundle.model(first.image[None]).softmax(1)[0, first.target.index]  # type: ignore[union-attr]
    row = next(r for r in rows if r["sample"] == first.id and r["method"] == "gradcam")
    assert float(row["score"]) == pytest.approx(float(probability), rel=1e-5)


BAD: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing root", lambda c: c["data"].update(root="/nonexistent/kits"), "is not a folder"),
    ("unknown method", lambda c: c["evaluation"].update(methods=["gradcma"]), "did you mean 'gradcam'"),
    ("unknown metric", lambda c: c["evaluation"].update(metrics=["dice"]), "metric 'dice' is not known"),
    ("unknown class", lambda c: c["target"].update({"class": "liver"}), "class 'liver' is not in this checkpoint"),
    ("unknown key", lambda c: c["data"].update(splitt="test"), "did you mean data.split"),
    ("bad option", lambda c: c["evaluation"].update(methods=[{"name": "gradcam", "options": {"k": 1}}]), "no option"),
    ("task mismatch", lambda c: c["data"].update(kind="iqothnccd"), "segmentation network but"),
    ("unknown truth", lambda c: c["target"].update(truth="liver"), "target.truth 'liver'"),
    ("bad pixel set", lambda c: c["target"].update(pixels="predictd"), "pixel set 'predictd' is not known"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_are_one_line_user_errors(
    phantoms: tuple[Path, Path],
    slices: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    root, model = phantoms
    config = kits_config(root, model, tmp_path / "out")
    change(config)
    if case == "task mismatch":
        config["data"]["root"] = str(slices[0])
    assert main(["evaluate", "--config", str(write_config(tmp_path / "c.yaml", config))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medcam: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_localisation_without_ground_truth_masks_is_refused(slices: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = slices
    config = {
        "model": {"checkpoint": str(model)},
        "data": {"kind": "iqothnccd", "root": str(root)},
        "target": {"class": "predicted"},
        "evaluation": {"methods": ["gradcam"], "metrics": ["localisation"]},
    }
    path = write_config(tmp_path / "c.yaml", config)
    with pytest.raises(UserError, match="localisation metrics need a ground-truth mask"):
        open_samples(load_config(path), load_checkpoint(model).meta)


def test_model_demo_names_the_shipped_checkpoint(tmp_path: Path) -> None:
    config = kits_config(tmp_path, tmp_path / "unused.pt", tmp_path / "out")
    config["model"] = "demo"
    assert load_config(write_config(tmp_path / "c.yaml", config)).model.checkpoint is None  # DEMO_CHECKPOINT
    config["model"] = "demonstration"
    with pytest.raises(UserError, match="model must be 'demo' or a mapping"):
        load_config(write_config(tmp_path / "c.yaml", config))


def test_the_command_line_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"data": {"kind": "kits23", "root": str(tmp_path / "none")}})
    done = subprocess.run(
        [sys.executable, "-m", "medcam", "evaluate", "--config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "medcam: error: the evaluation config needs a 'target' section"


@pytest.mark.parametrize("name", ["eval_kits_phantom", "eval_iqothnccd_classifier"])
def test_the_shipped_evaluation_configs_parse(name: str) -> None:
    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert config.output == f"runs/{name}"
    if name == "eval_kits_phantom":
        assert config.model.checkpoint is None and config.target.truth == "tumor"
        names = [m.name for m in config.evaluation.methods]
        assert names == ["gradcam", "hirescam", "scorecam", "fusioncam", "robustcam"]
        assert "region_faithfulness" in config.evaluation.metrics  # the segmentation metrics and controls
    else:
        assert config.data.split == "test" and config.data.split_seed == 42  # the training config's split
        assert config.evaluation.sanity.samples is not None


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_ranks_shard_and_rank0_merges(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    """Two ranks under the real launcher (gloo): rank 0 merges; the rows equal a single-process run."""
    root, model = phantoms
    changes = {"evaluation": {"methods": ["gradcam"], "metrics": ["localisation"]}}
    config = write_config(tmp_path / "c.yaml", kits_config(root, model, tmp_path / "x", **changes))
    one, ranks = tmp_path / "one", tmp_path / "ranks"
    assert main(["evaluate", "--config", str(config), "--out", str(one), "--no-progress"]) == 0
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), environment.get("PYTHONPATH", "")])
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "medcam",
         "evaluate", "--config", str(config), "--out", str(ranks), "--no-progress"],
        capture_output=True, text=True, env=environment, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (ranks / "shards").glob("results.rank*.csv")) == [
        "results.rank0-of-2.csv",
        "results.rank1-of-2.csv",
    ]
    assert (ranks / "summary.md").is_file()
    assert timeless(ranks) == timeless(one)
