"""Shared by the ``*_vs_trl.py`` benchmarks: a step timer for Lightning, runs that alternate between
frameworks in fresh processes, medians, a table and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
TRL_PYTHON = HERE / ".venv-trl" / "bin" / "python"


def step_timer(warmup_steps: int, measured_steps: int):
    """A Lightning callback recording wall time and real tokens of the measured optimizer steps."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self._start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if warmup_steps <= trainer.global_step - 1 < warmup_steps + measured_steps:
                self.times.append(time.perf_counter() - self._start)
                self.tokens.append(int(batch["attention_mask"].sum()))

        def result(self) -> dict:
            return {
                "step_times_s": self.times,
                "median_step_s": statistics.median(self.times),
                "tokens_per_s": sum(self.tokens) / sum(self.times),
                "mean_real_tokens_per_batch": sum(self.tokens) / len(self.tokens),
            }

    return StepTimer()


def alternate(repeats: int, commands: dict[str, Callable[[Path], list[str]]], work: Path) -> dict[str, list[dict]]:
    """Run each framework's command ``repeats`` times, alternating, each in a fresh process that writes
    its JSON result to the path it is given."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for i in range(repeats):
        for name, command in commands.items():
            out = work / f"{name}-{i}.json"
            done = subprocess.run(command(out), capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} run {i + 1} failed:\n{done.stderr[-4000:]}")
            result = json.loads(out.read_text())
            runs[name].append(result)
            print(
                f"run {i + 1}/{repeats} {name:15s} {result['tokens_per_s']:8.1f} tok/s  median step "
                f"{result['median_step_s']:.2f} s  peak RSS {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return runs


def summarize(runs: dict[str, list[dict]], extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """Medians over the runs of each framework, of tokens/s, step time, peak RSS and ``extra`` fields."""
    fields = ("tokens_per_s", "median_step_s", "peak_rss_mb", "mean_real_tokens_per_batch", *extra)
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            f"median_{f}" if not f.startswith("median") else f: statistics.median(r[f] for r in results) for f in fields
        }
        summary[name]["trainable_params"] = results[0]["trainable_params"]
    return summary


def print_table(summary: dict[str, dict]) -> None:
    columns = [c for c in next(iter(summary.values()))]
    print("\n| framework | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in summary.items():
        cells = [f"{row[c]:,.3f}" if isinstance(row[c], float) else f"{row[c]:,}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


def write_result(path: Path, benchmark: str, settings: dict, summary: dict, ratios: dict, runs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": benchmark,
        "device": f"CPU: {platform.machine()}, {os.cpu_count()} cores, no GPU",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "settings": {**settings, "lora_targets": LORA_TARGETS},
        "summary": summary,
        "ratio_ours_over_trl": ratios,
        "runs": runs,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def report(path: Path, benchmark: str, args, hidden: tuple[str, ...], runs: dict, extra: tuple[str, ...] = ()) -> None:
    """Medians, table, ours/TRL ratios, and the JSON record (settings: ``args`` minus ``hidden``)."""
    summary = summarize(runs, extra)
    print_table(summary)
    ours, trl = summary["rlhf_lightning"], summary["trl"]
    ratios = {
        "tokens_per_s": ours["median_tokens_per_s"] / trl["median_tokens_per_s"],
        "peak_rss": ours["median_peak_rss_mb"] / trl["median_peak_rss_mb"],
    }
    print(f"\nrlhf_lightning / TRL: tokens/s x{ratios['tokens_per_s']:.2f}, peak RSS x{ratios['peak_rss']:.2f}")
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json_out", "out", *hidden)}
    write_result(path, benchmark, settings, summary, ratios, runs)
