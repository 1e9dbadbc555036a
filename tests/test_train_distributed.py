"""DDP under torchrun: 2 CPU processes (gloo) shard the data and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medcam.data.synthetic import write_kits_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_ranks_agree_on_the_weights(tmp_path):
    write_kits_dataset(tmp_path / "kits", 5, seed=0, shape=(16, 32, 32))
    config = {
        "name": "ddp",
        "task": "segmentation",
        "output": str(tmp_path / "run"),
        "dataset": {"kind": "kits23", "root": str(tmp_path / "kits"), "fractions": [0.8, 0.2, 0.0]},
        "model": {
            "architecture": "monai.UNet",
            "arguments": {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 4,
                "channels": [4, 8],
                "strides": [2],
                "norm": "batch",  # running statistics are buffers: DDP must keep them in sync too
            },
        },
        "preprocessing": {"orientation": "IPL", "spacing": [20.0, 12.0, 12.0], "a_min": -200.0, "a_max": 300.0},
        "training": {"epochs": 2, "batch_size": 1, "patch_size": [8, 16, 16], "threads": 1, "device": "cpu"},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "training" / "train_segmentation.py"), "--config", str(path), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    rank0, rank1 = summary["rank_weight_fingerprints"]
    assert rank0 == rank1  # bit-identical replicas after the all-reduced updates
    items0, items1 = summary["rank_first_epoch_items"]
    assert len(items0) == len(items1) == 2 and set(items0).isdisjoint(items1)  # 4 training cases, 2 per rank
    assert (tmp_path / "run" / "best.pt").is_file()
