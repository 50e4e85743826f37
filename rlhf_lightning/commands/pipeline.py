"""``rlhf-lightning pipeline``: SFT -> reward model -> PPO -> evaluation -> export, in one root folder.

    rlhf-lightning pipeline --config configs/quickstart.yaml

Each training stage is an ordinary ``rlhf-lightning fit`` of its own YAML config, run as a child process
with its run folder set to ``ROOT/<stage>`` and wired to the folders of the stages before it (the reward
model and PPO start from ``ROOT/sft/final``; PPO scores with ``ROOT/reward/final``). Then the PPO policy is
compared with the SFT model on held-out prompts (``ROOT/evaluation``), both models are exported as plain
Hugging Face folders (``ROOT/export/policy``, ``ROOT/export/reward``), and a summary table is printed and
written to ``ROOT/summary.md`` and ``ROOT/summary.json``.

Started again, the pipeline skips the steps ``ROOT/pipeline.json`` records as done, and a stage that was
interrupted resumes from its last checkpoint (``--ckpt_path last``).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf_lightning.commands.evaluate import evaluate_policies
from rlhf_lightning.commands.export import export_model
from rlhf_lightning.evaluation.config import EvalConfig
from rlhf_lightning.evaluation.report import markdown_table, read_scalars
from rlhf_lightning.models.run_folder import DEGENERATE_FILE, FINAL_FOLDER, HELDOUT_FILE

STAGES = ("sft", "reward", "ppo")
STEPS = (*STAGES, "evaluation", "export")
STATE_FILE, SUMMARY_MD, SUMMARY_JSON = "pipeline.json", "summary.md", "summary.json"


@dataclass
class StageSpec:
    """One training stage: its ``fit`` config and the settings the pipeline changes in it."""

    config: str
    """The stage's YAML config (as for ``rlhf-lightning fit --config``)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted keys and values passed on the command line after the config, e.g. ``trainer.max_steps: 20``."""


@dataclass
class EvaluationSpec(EvalConfig):
    """The comparison of the PPO policy with the SFT model after training (``rlhf-lightning evaluate``): the
    :class:`~rlhf_lightning.evaluation.config.EvalConfig` fields, and the prompts. Fields left empty are taken
    from the PPO run: the prompts it held out (recorded in its ``heldout_prompts.jsonl``) and its evaluation
    settings, so the numbers are those of PPO's own evaluation at the end of training."""

    temperature: float | None = None
    """Sampling temperature of both policies; default: the PPO stage's evaluation temperature."""
    seed: int | None = None
    """Seed of the comparison's sampling; default: the PPO stage's ``evaluation.seed``."""
    num_samples: int = 8
    """Rows of the side-by-side sample table."""
    gold_function: str | None = None
    """``module:function`` of the true preference; default: the PPO stage's ``evaluation.gold_function``."""
    prompts: str | None = None
    """Prompts file; default: the PPO run's recorded held-out prompts."""
    val_fraction: float | None = None
    """Held-out fraction of ``prompts`` when they are given (0 evaluates every prompt)."""
    split_seed: int | None = None
    """Seed of the held-out split of given ``prompts``; default: the PPO stage's."""
    max_prompts: int | None = None
    """Evaluate at most this many prompts."""
    max_new_tokens: int | None = None
    """Longest response; default: the PPO stage's ``rollout.max_new_tokens``."""
    batch_size: int | None = None
    """Prompts per generation batch; default: the PPO stage's validation batch size."""


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stage_arguments(stage: str, spec: StageSpec, root: Path, common: dict[str, Any], resume: bool) -> list[str]:
    """The ``fit`` command line of one stage: its config, the common and its own overrides, then the run
    folder and the folders of the earlier stages."""
    args = ["fit", "--config", spec.config]
    for key, value in {**common, **spec.overrides}.items():
        args.append(f"--{key}={_cli_value(value)}")
    args.append(f"--trainer.default_root_dir={root / stage}")
    if stage in ("reward", "ppo"):
        args.append(f"--model.init_args.model.adapter={root / 'sft' / FINAL_FOLDER}")
    if stage == "ppo":
        args.append(f"--model.init_args.reward_model={root / 'reward' / FINAL_FOLDER}")
    if resume:
        args.append("--ckpt_path=last")
    return args


def _lookup(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


class Pipeline:
    def __init__(
        self,
        root_dir: str,
        sft: StageSpec,
        reward: StageSpec,
        ppo: StageSpec,
        evaluation: EvaluationSpec,
        export: bool,
        common: dict[str, Any],
    ) -> None:
        self.root = Path(root_dir)
        self.specs = {"sft": sft, "reward": reward, "ppo": ppo}
        self.evaluation, self.export, self.common = evaluation, export, common
        self.state_path = self.root / STATE_FILE
        self.state: dict = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"steps": {}}

    # --- state ---------------------------------------------------------------------------------------------
    def done(self, step: str) -> bool:
        return self.state["steps"].get(step, {}).get("status") == "done"

    def _mark(self, step: str, seconds: float) -> None:
        self.state["steps"][step] = {
            "status": "done",
            "seconds": round(seconds, 1),
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2) + "\n")

    def _check_not_stale(self) -> None:
        """Refuse to run a stage while a later step's results, built on the old output, are still there."""
        todo = next((s for s in STEPS if not self.done(s)), None)
        if todo is None:
            return
        later = STEPS[STEPS.index(todo) + 1 :]
        stale = [self.root / s for s in later if (self.root / s).exists()]
        if stale:
            raise SystemExit(
                f"error: the pipeline would rerun '{todo}', but {', '.join(map(str, stale))} hold results built on "
                f"the previous '{todo}'. Delete them (and the '{todo}' folder to restart it from scratch), or use "
                "another root_dir."
            )

    # --- steps ---------------------------------------------------------------------------------------------
    def run_stage(self, stage: str) -> None:
        folder = self.root / stage
        resume = (folder / "checkpoints" / "last.ckpt").exists()
        args = stage_arguments(stage, self.specs[stage], self.root, self.common, resume)
        print(f"\n=== {stage}: {'resuming from its last checkpoint' if resume else 'starting'} ===", flush=True)
        print("rlhf-lightning " + " ".join(args), flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "rlhf_lightning.cli", *args])
        if code != 0:
            raise SystemExit(
                f"error: the {stage} stage stopped (exit code {code}). Fix the cause and run the same pipeline "
                f"command again: finished stages are skipped and {stage} resumes from its last checkpoint."
            )
        if not (folder / FINAL_FOLDER).exists():
            raise SystemExit(f"error: the {stage} stage ended without writing {folder / FINAL_FOLDER}")
        self._mark(stage, time.perf_counter() - start)

    def evaluation_arguments(self) -> dict[str, Any]:
        """The evaluation's settings: those given in ``evaluation``, the rest from the PPO run's resolved
        ``config.yaml`` (its prompts and held-out split, response length, gold function and seed)."""
        ev = self.evaluation
        resolved = yaml.safe_load((self.root / "ppo" / "config.yaml").read_text())

        def ppo(dotted: str, given: Any = None) -> Any:
            return given if given is not None else _lookup(resolved, dotted)

        heldout = self.root / "ppo" / HELDOUT_FILE
        if ev.prompts is None and heldout.exists():  # exactly the prompts PPO evaluated on
            prompts, val_fraction = str(heldout), 0.0
        elif ev.prompts is None:  # PPO held nothing out: it evaluated on its training prompts
            prompts, val_fraction = ppo("data.init_args.train_files"), 0.0
        else:
            prompts, val_fraction = ev.prompts, ev.val_fraction or 0.0
        rollout = ppo("model.init_args.rollout") or {}
        temperature = ppo("model.init_args.evaluation.temperature", ev.temperature)
        evaluation = EvalConfig(
            temperature=rollout.get("temperature") if temperature is None else temperature,
            seed=ppo("model.init_args.evaluation.seed", ev.seed) or 0,
            num_samples=ev.num_samples,
            gold_function=ppo("model.init_args.evaluation.gold_function", ev.gold_function),
        )
        return {
            "prompts": prompts,
            "val_fraction": val_fraction,
            "split_seed": ppo("data.init_args.split_seed", ev.split_seed),
            "max_length": ppo("data.init_args.max_length"),
            "overlong": ppo("data.init_args.overlong"),
            "chat_template": ppo("data.init_args.chat_template") or "auto",
            "max_new_tokens": ev.max_new_tokens or rollout.get("max_new_tokens"),
            "stop_tokens": rollout.get("stop_tokens") or [],
            "missing_eos_penalty": ppo("model.init_args.rewards.missing_eos_penalty"),
            "missing_eos_mode": ppo("model.init_args.rewards.missing_eos_mode"),
            "penalize_empty": ppo("model.init_args.rewards.penalize_empty") is not False,
            "max_prompts": ev.max_prompts,
            "batch_size": ev.batch_size or ppo("data.init_args.val_batch_size") or ppo("data.init_args.batch_size"),
            "evaluation": evaluation,
        }

    def run_evaluation(self) -> None:
        print("\n=== evaluation: PPO policy vs SFT model on held-out prompts ===", flush=True)
        start = time.perf_counter()
        prompts = self.evaluation_arguments()
        evaluate_policies(
            policy=str(self.root / "ppo" / FINAL_FOLDER),
            baseline=str(self.root / "sft" / FINAL_FOLDER),
            reward_model=str(self.root / "reward" / FINAL_FOLDER),
            output=str(self.root / "evaluation"),
            **prompts,
        )
        self._mark("evaluation", time.perf_counter() - start)

    def run_export(self) -> None:
        print("\n=== export: merged Hugging Face folders ===", flush=True)
        start = time.perf_counter()
        for name, stage in (("policy", "ppo"), ("reward", "reward")):
            export_model(str(self.root / stage / FINAL_FOLDER), str(self.root / "export" / name), overwrite=True)
        self._mark("export", time.perf_counter() - start)

    def run(self) -> dict:
        self._check_not_stale()
        for step in STEPS:
            if self.done(step):
                print(f"=== {step}: done earlier, skipped (see {self.state_path}) ===", flush=True)
            elif step in STAGES:
                self.run_stage(step)
            elif step == "evaluation":
                self.run_evaluation()
            elif self.export:
                self.run_export()
        return self.write_summary()

    # --- summary -------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        root = self.root

        def first_last(stage: str, tag: str) -> tuple[float | None, float | None]:
            values = read_scalars(root / stage, tag)
            return (next(iter(values.values())), values[max(values)]) if values else (None, None)

        sft_first, sft_last = first_last("sft", "train/loss")
        _, sft_val = first_last("sft", "val/loss")
        _, accuracy = first_last("reward", "val/accuracy")
        score_first, score_last = first_last("ppo", "objective/scores")
        kl_first, kl_last = first_last("ppo", "objective/kl")
        evaluation = json.loads((root / "evaluation" / "evaluation.json").read_text())["summary"]
        check = root / "reward" / FINAL_FOLDER / DEGENERATE_FILE
        empty = json.loads(check.read_text())["kinds"]["empty"]["above_median_real"] if check.exists() else None
        summary = {
            "sft/train_loss_first": sft_first,
            "sft/train_loss_last": sft_last,
            "sft/val_loss": sft_val,
            "reward/val_accuracy": accuracy,
            "reward/empty_above_median_real": empty,
            "ppo/score_first_iteration": score_first,
            "ppo/score_last_iteration": score_last,
            "ppo/kl_first_iteration": kl_first,
            "ppo/kl_last_iteration": kl_last,
            **{f"eval/{k}": v for k, v in evaluation.items()},
            "seconds": {step: info.get("seconds") for step, info in self.state["steps"].items()},
        }
        return summary

    def summary_table(self, s: dict[str, Any]) -> str:
        def f(value, digits: int = 3) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        rows = [
            (
                "SFT: training loss (first → last step)",
                f"{f(s['sft/train_loss_first'])} → {f(s['sft/train_loss_last'])}",
            ),
            ("SFT: held-out loss", f(s["sft/val_loss"])),
            ("Reward model: held-out accuracy", f(s["reward/val_accuracy"])),
            (
                "Reward model: share of checked prompts where an empty answer beats the median real one",
                f(s["reward/empty_above_median_real"], 2),
            ),
            (
                "PPO: reward-model score (first → last iteration)",
                f"{f(s['ppo/score_first_iteration'])} → {f(s['ppo/score_last_iteration'])}",
            ),
            (
                "PPO: KL to SFT, nats (first → last iteration)",
                f"{f(s['ppo/kl_first_iteration'])} → {f(s['ppo/kl_last_iteration'])}",
            ),
            ("Held-out score: PPO policy vs SFT", f"{f(s['eval/policy_score'])} vs {f(s['eval/baseline_score'])}"),
            ("Held-out win rate of PPO over SFT (reward model)", f(s["eval/win_rate"])),
            ("Held-out KL of PPO to SFT, nats", f(s.get("eval/policy_kl"))),
            (
                "Held-out length, tokens: PPO vs SFT",
                f"{f(s['eval/policy_length'], 1)} vs {f(s['eval/baseline_length'], 1)}",
            ),
            (
                "Held-out empty answers: PPO vs SFT",
                f"{f(s.get('eval/policy_empty'), 2)} vs {f(s.get('eval/baseline_empty'), 2)}",
            ),
        ]
        if "eval/gold_policy" in s:
            rows += [
                ("Gold score: PPO policy vs SFT", f"{f(s['eval/gold_policy'])} vs {f(s['eval/gold_baseline'])}"),
                ("Gold win rate of PPO over SFT", f(s["eval/gold_win_rate"])),
            ]
        seconds = s["seconds"]
        total = sum(v for v in seconds.values() if v)
        rows.append(
            (
                "Time, minutes",
                f"{total / 60:.1f} (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if v) + ")",
            )
        )
        return markdown_table(["", "value"], rows, numbered=False)

    def write_summary(self) -> dict:
        summary = self.summary()
        table = self.summary_table(summary)
        (self.root / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        lines = [f"# Pipeline summary: {self.root}", "", table, ""]
        lines += [f"- {name}: `{self.root / name}`" for name in (f"{s}/{FINAL_FOLDER}" for s in STAGES)]
        lines += [f"- evaluation: `{self.root / 'evaluation' / 'evaluation.md'}`"]
        if self.export:
            lines += [f"- exported models: `{self.root / 'export' / 'policy'}`, `{self.root / 'export' / 'reward'}`"]
        (self.root / SUMMARY_MD).write_text("\n".join(lines) + "\n")
        print("\n" + "\n".join(lines), flush=True)
        return summary


def run_pipeline(
    sft: StageSpec,
    reward: StageSpec,
    ppo: StageSpec,
    root_dir: str = "runs/pipeline",
    evaluation: EvaluationSpec = EvaluationSpec(),  # noqa: B008 - shows every field in --help
    export: bool = True,
    common: dict[str, Any] | None = None,
) -> dict:
    """Run SFT, reward model and PPO, then evaluate the policy against the SFT model and export both models.

    Args:
        sft: The SFT stage's config and overrides.
        reward: The reward stage's config and overrides (it starts from the SFT adapter).
        ppo: The PPO stage's config and overrides (SFT adapter as policy start and reference, the reward model).
        root_dir: One folder for everything: ``sft/``, ``reward/``, ``ppo/``, ``evaluation/``, ``export/``,
            ``summary.md``.
        evaluation: The final comparison of the PPO policy with the SFT model.
        export: Export the policy and the reward model as plain Hugging Face folders.
        common: Overrides for every stage, e.g. ``{"trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed"}``.
    """
    pipeline = Pipeline(root_dir, sft, reward, ppo, evaluation, export, dict(common or {}))
    pipeline.root.mkdir(parents=True, exist_ok=True)
    (pipeline.root / "pipeline_config.yaml").write_text(
        yaml.safe_dump(
            {
                "root_dir": root_dir,
                **{k: asdict(v) for k, v in pipeline.specs.items()},
                "evaluation": asdict(evaluation),
                "export": export,
                "common": pipeline.common,
            },
            sort_keys=False,
        )
    )
    return pipeline.run()
