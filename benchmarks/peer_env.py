"""Separate virtual environments for peers: M3d-CAM (whose PyPI package is also named
``medcam``) and nnunetv2-cam (:func:`ensure_nnunet_cam_env`, same layout).

Layout of ``benchmarks/.peer-venv/`` (git-ignored):

* M3d-CAM (``medcam==0.1.22``) installed with ``--no-deps`` into the venv's own
  site-packages, plus the few small packages it imports that the project's
  environment lacks (pandas, scikit-image);
* a ``.pth`` file that appends the project environment's site-packages to
  ``sys.path``, so torch, torchvision, MONAI, numpy ... come from there (no second
  torch download). A ``.pth`` line appends a plain directory: the ``.pth`` files
  inside it -- among them the editable install of this project's ``medcam`` -- are
  NOT processed, and the venv's own site-packages comes first, so ``import medcam``
  finds M3d-CAM. :func:`ensure_peer_env` checks exactly that before returning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

M3DCAM = "medcam==0.1.22"
NNUNETV2_CAM = "nnunetv2-cam==0.1.6.1"
# what M3d-CAM imports at `from medcam import medcam_inject` beyond the project's environment
EXTRA = ("pandas", "scikit-image")
MARKER = "peer-env.json"


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def peer_python(root: Path) -> Path:
    return root / "bin" / "python"


def identify(python: Path) -> dict[str, str]:
    """Which ``medcam`` the peer interpreter imports, and where torch comes from."""
    code = (
        "import json, sys, importlib.metadata as md, medcam, torch; "
        "print(json.dumps({'medcam': medcam.__file__, 'medcam_version': md.version('medcam'), "
        "'torch': torch.__file__, 'torch_version': torch.__version__, 'prefix': sys.prefix, "
        "'ours': hasattr(medcam, 'explain')}))"
    )
    return _report(python, code, "the peer environment")


def _link_project_site(python: Path, env: dict[str, str]) -> None:
    """A ``.pth`` in the peer venv that appends the project environment's site-packages (torch etc.)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    platlib = Path(sysconfig.get_paths()["platlib"])
    peer_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    lines = dict.fromkeys(str(p) for p in (purelib, platlib))
    (peer_site / "zz-project-site-packages.pth").write_text("\n".join(lines) + "\n")


def ensure_peer_env(root: Path) -> dict[str, str]:
    """Create (once) and verify the M3d-CAM environment at ``root``; return what it imports."""
    python = peer_python(root)
    env = _clean_env()
    if not (root / MARKER).exists():
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(root)], env)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        # M3d-CAM first, before the project's packages become visible, so pip never
        # sees (and never tries to replace) this project's medcam distribution
        _run([*pip, "--no-deps", M3DCAM], env)
        _link_project_site(python, env)
        _run([*pip, *EXTRA], env)
        info = identify(python)
        (root / MARKER).write_text(json.dumps(info, indent=2))
    info = identify(python)
    if info["ours"] or not Path(info["medcam"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the peer environment imports the wrong medcam: {info['medcam']}")
    for heavy in ("torch", "numpy"):
        if list((Path(info["medcam"]).parents[1]).glob(f"{heavy}")):
            raise RuntimeError(f"{heavy} was installed into the peer environment; delete {root} and retry")
    return info


def identify_nnunet_cam(python: Path) -> dict[str, str]:
    """Where the nnunetv2-cam interpreter finds nnunetv2_cam, torch, nnunetv2 and pytorch-grad-cam."""
    code = (
        "import json, sys, importlib.metadata as md, torch, nnunetv2, pytorch_grad_cam, nnunetv2_cam; "
        "print(json.dumps({'nnunetv2_cam': nnunetv2_cam.__file__, 'nnunetv2_cam_version': md.version('nnunetv2-cam'), "
        "'torch': torch.__file__, 'torch_version': torch.__version__, 'nnunetv2_version': md.version('nnunetv2'), "
        "'grad_cam_version': md.version('grad-cam'), 'prefix': sys.prefix}))"
    )
    return _report(python, code, "the nnunetv2-cam environment")


def _report(python: Path, code: str, what: str) -> dict[str, str]:
    """Run ``code`` (which prints one JSON line) in ``python``, away from this checkout."""
    done = subprocess.run(
        [str(python), "-c", code], env=_clean_env(), capture_output=True, text=True, cwd="/", check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} does not import: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_nnunet_cam_env(root: Path) -> dict[str, str]:
    """Create (once) and verify the nnunetv2-cam environment at ``root``.

    Only ``nnunetv2-cam`` itself is installed there, with ``--no-deps``: everything it
    imports (nnunetv2, grad-cam, opencv, torch ...) is already in the project's
    environment and comes from there through the ``.pth`` link, so pip never resolves
    (or upgrades) torch.
    """
    root = root.resolve()
    python = peer_python(root)
    env = _clean_env()
    if not (root / MARKER).exists():
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(root)], env)
        _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", NNUNETV2_CAM], env)
        _link_project_site(python, env)
        (root / MARKER).write_text(json.dumps(identify_nnunet_cam(python), indent=2))
    info = identify_nnunet_cam(python)
    if not Path(info["nnunetv2_cam"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the nnunetv2-cam environment imports nnunetv2_cam from {info['nnunetv2_cam']}")
    if Path(info["torch"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"torch was installed into the nnunetv2-cam environment; delete {root} and retry")
    return info
