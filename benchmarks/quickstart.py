"""The README's main job, measured: the quickstart pipeline's summary and wall-clock time per step.

    .venv/bin/python benchmarks/quickstart.py                       # runs the pipeline in a fresh folder
    .venv/bin/python benchmarks/quickstart.py --root runs/quickstart  # records a pipeline that already ran
    .venv/bin/python benchmarks/quickstart.py --config configs/iterative_quickstart.yaml \
        --out benchmarks/results/iterative_quickstart.json        # the rounds of feedback

Prints the summary table and writes benchmarks/results/quickstart.json. Run nothing else on the machine
meanwhile: the step times are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--root", help="a finished pipeline root to record instead of running one")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quickstart.json"))
    args = parser.parse_args()

    wall = None
    if args.root is None:
        root = Path(tempfile.mkdtemp(prefix="quickstart-")) / "run"
        command = [sys.executable, "-m", "rlhf_lightning.cli", "pipeline", "--config", args.config,
                   f"--root_dir={root}", '--common={"trainer.enable_progress_bar": false}']  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True)
        wall = time.perf_counter() - start
    else:
        root = Path(args.root)
    state = json.loads((root / "pipeline.json").read_text())
    summary = json.loads((root / "summary.json").read_text())
    table = (root / "summary.md").read_text()
    print(table)
    record = {
        "benchmark": f"pipeline {args.config}",
        "device": f"CPU: {platform.machine()}, {os.cpu_count()} cores, no GPU",
        "command": f"rlhf-lightning pipeline --config {args.config}",
        "recorded_with": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "wall_seconds_total": wall,  # None when recording an earlier run: see step_seconds
        "step_seconds_sum": sum(s["seconds"] for s in state["steps"].values()),
        "step_seconds": {k: v["seconds"] for k, v in state["steps"].items()},
        "summary": summary,
        "table_markdown": table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
