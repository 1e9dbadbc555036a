"""Network precision: the fp32 / bf16 / auto grammar; bfloat16 explanations agree with float32 on the demo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from medcam.core.precision import autocast, autocast_dtype, native_bf16, resolved, stages
from medcam.data.synthetic import case_seed, write_kits_case
from medcam.errors import UserError
from medcam.pipeline import ExplainOptions, explain_volume

CPU = torch.device("cpu")


def test_stages_of_each_precision() -> None:
    assert stages(CPU, "fp32") == ("fp32", "fp32")
    assert stages(CPU, "bf16") == ("bf16", "bf16")
    assert stages(CPU, "auto") == ("bf16" if native_bf16(CPU) else "fp32", "fp32")
    assert resolved(CPU, "fp32") == {"requested": "fp32", "prediction": "fp32", "cam": "fp32"}
    with pytest.raises(UserError, match="precision='half' is not known"):
        stages(CPU, "half")
    with pytest.raises(UserError, match="precision='fp16' is not known"):
        ExplainOptions(precision="fp16")  # type: ignore[arg-type]


def test_autocast_runs_the_network_in_bfloat16_and_fp32_is_untouched() -> None:
    layer = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 6, 6, 6)
    with autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    if autocast_dtype(CPU, "bf16") is None:
        pytest.skip("this CPU has no native bfloat16")
    with autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bfloat16 (oneDNN)")
def test_bfloat16_agrees_with_float32_on_the_demo_model(tmp_path: Path) -> None:
    # a held-out phantom (the evaluation data's dataset seed), cut to two windows of the demo model
    case = write_kits_case(tmp_path, 0, seed=case_seed(1000, 0), shape=(48, 128, 128))
    image = case / "imaging.nii.gz"
    fp32 = explain_volume(image, class_name="kidney", precision="fp32")
    for precision, min_rho in (("auto", 0.99), ("bf16", 0.95)):
        other = explain_volume(image, class_name="kidney", precision=precision)
        assert np.mean(other.prediction == fp32.prediction) >= 0.999
        rho = stats.spearmanr(fp32.heatmap.ravel(), other.heatmap.ravel()).statistic
        assert rho >= min_rho, (precision, rho)
        assert other.summary["precision"] == {
            "requested": precision,
            "prediction": "bf16",
            "cam": precision.replace("auto", "fp32"),
        }
    assert fp32.summary["precision"]["cam"] == "fp32"
