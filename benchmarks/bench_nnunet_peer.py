"""``medcam explain`` and the peer package ``nnunetv2-cam`` on the same nnU-Net model and case.

The model and case of ``bench_nnunet.py`` (plans made by nnU-Net's own planner for a
synthetic dataset, two folds of random weights, a test case with another voxel size and
an oblique affine). Each tool runs once in its own fresh process, Grad-CAM at the same
module (the last decoder level before the output, ``decoder.stages.K``) for the label
``tumor`` (2), both folds, test-time mirroring off:

* medcam (this project's environment): ``medcam explain --method gradcam --pixels
  predicted --disable-tta``;
* nnunetv2-cam 0.1.6.1 (a separate venv, ``benchmarks/.peer-venv-nnunet``, see
  ``peer_env.py``; torch and nnunetv2 come from the project's environment):
  ``run_cam_for_prediction(predictor, case, out, target_layer, target_class=2,
  method="gradcam")`` with its defaults (``cam_type="2d"``, PNG slices written), after
  ``nnUNetPredictor.initialize_from_trained_model_folder``.

Reported per tool: what it explains, wall seconds of the work (model load, CAM, files
written; imports excluded), peak resident set size of the process (``VmHWM``) and of
its process tree sampled every 0.1 s (nnunetv2-cam runs nnU-Net's preprocessing in a
spawned worker process), whether the map lies on the input grid, each map's share inside
the predicted tumour, and the Spearman and Pearson correlation of the two maps on the
input grid.

    python benchmarks/bench_nnunet_peer.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_ROOT = HERE / ".peer-venv-nnunet"


def _peak_mb() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _report(started: float, rss_before: float, **extra: object) -> None:
    result = {"seconds": time.perf_counter() - started, "peak_mb": _peak_mb(), "rss_before_mb": rss_before}
    print(json.dumps({**result, **extra}))


def worker_medcam(folder: str, case: str, out: str, layer: str) -> None:
    from medcam.cli import main

    rss = _rss_mb()
    started = time.perf_counter()
    command = ["explain", "--volume", case, "--model", folder, "--class", "tumor", "--method", "gradcam"]
    command += ["--layer", f"folds.0.{layer}", "--pixels", "predicted", "--disable-tta", "--out", out]
    with contextlib.redirect_stdout(sys.stderr):
        code = main([*command, "--no-progress"])
    if code != 0:
        raise SystemExit(f"medcam explain exited with {code}")
    _report(started, rss, map=str(Path(out) / "heatmap.nii.gz"))


def worker_peer(folder: str, case: str, out: str, layer: str) -> None:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2_cam import run_cam_for_prediction

    rss = _rss_mb()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # it prints a citation banner
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False
        )
        predictor.initialize_from_trained_model_folder(folder, use_folds=(0, 1))
        heatmaps = run_cam_for_prediction(
            predictor, case, out, layer, target_class=2, method="gradcam", device=torch.device("cpu")
        )
    written = Path(out) / "nnunetv2_cam_map.npy"
    np.save(written, heatmaps[0])
    pngs = len(list(Path(out).rglob("*.png")))
    _report(started, rss, map=str(written), pngs=pngs, shape=list(heatmaps[0].shape))


def _outcome(result: dict) -> str:
    return f"error: {result['error']}" if "error" in result else f"ran ({result['seconds']:.1f} s)"


def _tree_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and all its descendants (scanned from /proc), in MB."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for member in tree:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((Path("/proc") / str(member) / "statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker_peer_checks(
    model: str, case: str, out: str, layer: str, two_channel_model: str, two_channel_case: str
) -> None:
    """What the issue reports of nnunetv2-cam, rerun: a two-channel model, and its CLI's --save-numpy."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2_cam import run_cam_for_prediction

    checks = {}
    with contextlib.redirect_stdout(sys.stderr):
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(two_channel_model, use_folds=(0,))
        try:
            run_cam_for_prediction(
                predictor, two_channel_case, f"{out}/two", layer, target_class=2, device=torch.device("cpu")
            )
            checks["two_channels"] = "ran"
        except Exception as err:  # the peer's failure is what is recorded
            checks["two_channels"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    command = [sys.executable, "-m", "nnunetv2_cam.cli", "-i", case, "-o", f"{out}/cli", "-m", model, "-f", "0"]
    command += ["--target-layer", layer, "--target-class", "2", "-device", "cpu", "--disable-tta"]
    done = subprocess.run([*command, "--save-numpy", "--no-save-slices"], capture_output=True, text=True, check=False)
    errors = [line.strip() for line in done.stdout.splitlines() if "ERROR" in line]
    checks["save_numpy"] = f"exit {done.returncode}" + (f": {errors[0]}" if errors else "")
    print(json.dumps(checks))


def _run_worker(python: Path, tool: str, args: list[str], env: dict[str, str]) -> dict:
    """One tool in a fresh process; the peak of its process tree's RSS is sampled every 0.1 s."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--worker", tool, *args],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            cwd=str(HERE),
        )
        tree_peak = 0.0
        while process.poll() is None:
            tree_peak = max(tree_peak, _tree_rss_mb(process.pid))
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"error": (stderr.strip().splitlines() or ["no output"])[-1], "stderr": stderr[-4000:]}
    return {**json.loads(lines[-1]), "tree_peak_mb": tree_peak}


def _compare(case: Path, medcam_map: Path, peer_map: Path) -> dict:
    """Both maps on the input grid: shapes, Spearman / Pearson over every voxel, and each map's
    share of its sum inside medcam's predicted tumour (``prediction.nii.gz == 2``)."""
    import nibabel as nib
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    source = nib.load(case)
    ours = nib.load(medcam_map)
    theirs = np.load(peer_map).astype(np.float32)
    # nnU-Net's SimpleITK reader orders axes (z, y, x); the returned map keeps that order plus a channel
    theirs_xyz = theirs[0].transpose(2, 1, 0) if theirs.ndim == 4 else theirs.transpose(2, 1, 0)
    ours_data = np.asarray(ours.dataobj, dtype=np.float32)
    same_grid = theirs_xyz.shape == ours_data.shape == source.shape
    result = {
        "medcam_shape": list(ours.shape),
        "medcam_affine_equal": bool(np.allclose(ours.affine, source.affine, atol=1e-5)),
        "peer_shape_xyz": list(theirs_xyz.shape),
        "input_shape": list(source.shape),
        "peer_finite": bool(np.isfinite(theirs).all()),
        "peer_range": [float(theirs.min()), float(theirs.max())],
    }
    if same_grid and np.isfinite(theirs_xyz).all():
        a, b = ours_data.ravel(), theirs_xyz.ravel()
        result["spearman"] = float(spearmanr(a, b).statistic)
        result["pearson"] = float(pearsonr(a, b).statistic)
        tumour = np.asarray(nib.load(medcam_map.parent / "prediction.nii.gz").dataobj) == 2
        result["tumour_share"] = float(tumour.mean())
        result["medcam_inside"] = float(ours_data[tumour].sum() / max(ours_data.sum(), 1e-12))
        result["peer_inside"] = float(theirs_xyz[tumour].sum() / max(theirs_xyz.sum(), 1e-12))
    return result


def _two_channels(root: Path, plans: dict, dataset: dict, case: Path) -> tuple[Path, Path]:
    """A two-channel variant of the model (same plans, CT twice) and of the case (``_0001`` beside ``_0000``)."""
    import copy
    import shutil

    from bench_nnunet import trained_folder

    plans, dataset = copy.deepcopy(plans), copy.deepcopy(dataset)
    dataset["channel_names"] = {"0": "CT", "1": "CT"}
    config = plans["configurations"]["3d_fullres"]
    for key in ("normalization_schemes", "use_mask_for_norm"):
        config[key] = config[key] * 2
    properties = plans["foreground_intensity_properties_per_channel"]
    properties["1"] = properties["0"]
    plans["configurations"] = {"3d_fullres": config}
    folder = trained_folder(root / "res2", plans, dataset, "3d_fullres")
    (root / "test2").mkdir()
    first = root / "test2" / case.name
    shutil.copy(case, first)
    shutil.copy(case, root / "test2" / case.name.replace("_0000", "_0001"))
    return folder, first


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        tool, *rest = argv[1:]
        workers = {"medcam": worker_medcam, "nnunetv2-cam": worker_peer, "nnunetv2-cam-checks": worker_peer_checks}
        workers[tool](*rest)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args(argv)
    from bench_nnunet import plan_dataset, trained_folder, write_test_case
    from peer_env import _clean_env, ensure_nnunet_cam_env, peer_python

    info = ensure_nnunet_cam_env(PEER_ROOT)
    train_shape, test_shape = ((48, 48, 20), (40, 56, 24)) if args.quick else ((64, 64, 24), (56, 72, 28))
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        plans, dataset = plan_dataset(root, train_shape)
        folder = trained_folder(root / "res", plans, dataset, "3d_fullres")
        case = write_test_case(root / "test", test_shape)
        config = plans["configurations"]["3d_fullres"]
        stages = int(config["architecture"]["arch_kwargs"]["n_stages"])
        layer = f"decoder.stages.{stages - 3}"  # the last decoder level before the output (medcam's auto)
        env = _clean_env()
        project_env = {**env, "PYTHONPATH": str(HERE.parent)}
        runs = {
            "medcam": _run_worker(
                Path(sys.executable), "medcam", [str(folder), str(case), str(root / "m"), layer], project_env
            ),
            "nnunetv2-cam": _run_worker(
                peer_python(PEER_ROOT), "nnunetv2-cam", [str(folder), str(case), str(root / "p"), layer], env
            ),
        }
        two_model, two_case = _two_channels(root, plans, dataset, case)
        args_checks = [str(folder), str(case), str(root / "c"), layer, str(two_model), str(two_case)]
        checks = _run_worker(peer_python(PEER_ROOT), "nnunetv2-cam-checks", args_checks, env)
        ours_two = _run_worker(
            Path(sys.executable), "medcam", [str(two_model), str(two_case), str(root / "m2"), layer], project_env
        )
        errors = {tool: r for tool, r in runs.items() if "error" in r}
        compared = {} if errors else _compare(case, Path(runs["medcam"]["map"]), Path(runs["nnunetv2-cam"]["map"]))
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"nnU-Net plans: patch {config['patch_size']}, {stages} stages; test case {test_shape}; layer {layer}; "
        f"nnunetv2-cam {info['nnunetv2_cam_version']} (grad-cam {info['grad_cam_version']}, nnunetv2 "
        f"{info['nnunetv2_version']}, torch {info['torch_version']}); load average after the runs {load}\n"
    )
    for tool, result in errors.items():
        print(f"{tool} failed: {result['error']}\n\n```\n{result['stderr']}\n```\n")
    if errors:
        return 1
    ours, theirs = runs["medcam"], runs["nnunetv2-cam"]
    print("| | medcam explain | nnunetv2-cam |")
    print("|---|---|---|")
    print(f"| wall s (load, CAM, files) | {ours['seconds']:.1f} | {theirs['seconds']:.1f} |")
    print(f"| peak RSS MB (process) | {ours['peak_mb']:.0f} | {theirs['peak_mb']:.0f} |")
    print(f"| RSS MB after imports | {ours['rss_before_mb']:.0f} | {theirs['rss_before_mb']:.0f} |")
    print(f"| peak RSS MB (process tree, sampled) | {ours['tree_peak_mb']:.0f} | {theirs['tree_peak_mb']:.0f} |")
    print(
        f"| map shape (x, y, z) | {compared['medcam_shape']} (input {compared['input_shape']}) "
        f"| {compared['peer_shape_xyz']} (returned array, axes reversed) |"
    )
    affine = compared["medcam_affine_equal"]
    print(f"| map written as | heatmap.nii.gz, input affine: {affine} | {theirs['pngs']} PNG slices, no NIfTI |")
    print(f"| map range | [0, 1] | {compared['peer_range'][0]:.3g} .. {compared['peer_range'][1]:.3g} |")
    print(f"| two-channel model and case | {_outcome(ours_two)} | {checks.get('two_channels', checks.get('error'))} |")
    print(f"| its CLI with `--save-numpy` | - | {checks.get('save_numpy', checks.get('error'))} |")
    if "spearman" in compared:
        print(
            f"| map's share inside the predicted tumour ({compared['tumour_share']:.1%} of voxels) "
            f"| {compared['medcam_inside']:.1%} | {compared['peer_inside']:.1%} |"
        )
        print(
            f"\nAgreement on the input grid (every voxel): Spearman {compared['spearman']:.3f}, "
            f"Pearson {compared['pearson']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
