"""Golden outputs of `medcam explain` for the layout refactor (issue 12): run before and after, compare.

    python tests/golden/record.py OUT.json       # writes {case: {file: sha256}}
    python tests/golden/record.py OUT.json --compare BEFORE.json

Each case writes a review folder with the tiny KiTS test checkpoint (several windows) and the
shipped demo model; a file's digest covers its bytes, except summary.json, whose timings are
dropped, and .nii.gz files, whose decompressed bytes are hashed (gzip stores a time stamp).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from volume_phantoms import kits_checkpoint, write_kits_case  # noqa: E402

CASES = {
    "hirescam_predicted": {"method": "hirescam", "class_name": "kidney"},
    "gradcam_box": {"method": "gradcam", "class_name": "tumor", "pixels": "box:3,8,5:9,24,20"},
    "levels_gradcampp": {"method": "gradcam++", "class_name": "kidney", "layer": "levels"},
    "robustcam": {"method": "robustcam", "class_name": "kidney", "overlap": 0.5},
    "xgradcam_constant_region": {"method": "xgradcam", "class_name": "masses", "blend": "constant"},
}


def digest(path: Path) -> str:
    data = path.read_bytes()
    if path.name == "summary.json":
        summary = json.loads(data)
        summary.pop("timings_s", None)
        summary.pop("versions", None)
        summary.get("model", {}).pop("path", None)
        summary.get("input", {}).pop("path", None)
        data = json.dumps(summary, sort_keys=True).encode()
    elif path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.suffix in (".mrb", ".mrml", ".py", ".nrrd"):
        return "skipped"  # embed absolute temporary paths or compressed timestamps
    return hashlib.sha256(data).hexdigest()


def record() -> dict[str, dict[str, str]]:
    from medcam.pipeline import explain_case

    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        case = write_kits_case(root / "case_00000")
        model = kits_checkpoint(root / "kits_tiny.pt")
        for name, options in CASES.items():
            out = explain_case(case, root / name, model=model, **options)
            result[name] = {str(p.relative_to(out)): digest(p) for p in sorted(out.rglob("*")) if p.is_file()}
        demo = explain_case(case, root / "demo_model", class_name="tumor", pixels="image")
        result["demo_model_image"] = {
            str(p.relative_to(demo)): digest(p) for p in sorted(demo.rglob("*")) if p.is_file()
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--compare")
    args = parser.parse_args()
    result = record()
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [
            f"{case}/{name}"
            for case in sorted(set(before) | set(result))
            for name in sorted(set(before.get(case, {})) | set(result.get(case, {})))
            if before.get(case, {}).get(name) != result.get(case, {}).get(name)
        ]
        print("identical" if not differ else "DIFFER: " + ", ".join(differ))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
