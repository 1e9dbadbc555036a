"""Run every benchmark script: ``benchmarks/bench_*.py``, one after the other, with the same flags.

    python benchmarks/run_all.py [--quick] [any flag, passed to every script]

Each script prints a markdown table and accepts ``--quick``; scripts ignore flags
they do not know (``parse_known_args``). The combined output is printed and also
written to ``benchmarks/out/run_all-<time>.md``. The exit status is non-zero if
any script failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if any(flag in argv for flag in ("-h", "--help")):
        print(__doc__)
        return 0
    scripts = sorted(HERE.glob("bench_*.py"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p)
    sections, failed = [], []
    for script in scripts:
        command = [sys.executable, str(script), *argv]
        print(f"== {' '.join([script.name, *argv])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
        minutes = (time.perf_counter() - started) / 60
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        if done.returncode != 0:
            failed.append(script.name)
        sections.append(
            f"<!-- python benchmarks/{script.name} {' '.join(argv)}: {status}, {minutes:.1f} min -->\n{done.stdout}"
        )
        print(sections[-1], flush=True)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"run_all-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text("\n\n".join(sections))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
