"""``rlhf-lightning pipeline``: SFT -> reward model -> PPO -> evaluation -> export, in one root folder.

    rlhf-lightning pipeline --config configs/quickstart.yaml

Before anything trains, every stage still to run is checked (``rlhf-lightning check``: every file it reads,
the evaluation's and the labelling's prompts too, with no weight loaded), and the prompts the PPO stage holds
out are written to ``ROOT/evaluation_prompts.jsonl``; the SFT and reward stages leave them out
(``data.exclude_prompts``), so the evaluation's prompts are held out of every stage.

Each training stage is an ordinary ``rlhf-lightning fit`` of its own YAML config, run as a child process
with its run folder set to ``ROOT/<stage>`` and wired to the folders of the stages before it (the reward
model and PPO start from ``ROOT/sft/final``; PPO scores with ``ROOT/reward/final``). Then the PPO policy is
compared with the SFT model on held-out prompts (``ROOT/evaluation``), both models are exported as plain
Hugging Face folders (``ROOT/export/policy``, ``ROOT/export/reward``), and a summary table is printed and
written to ``ROOT/summary.md`` and ``ROOT/summary.json``.

Started again, the pipeline skips the steps ``ROOT/pipeline.json`` records as done, and a stage that was
interrupted resumes from its last checkpoint (``--ckpt_path last``).

With a ``labelling`` section the reward model learns from rankings made during the run, in ``rounds``:
round ``n`` samples candidates from the policy so far (the SFT model in round 1, round ``n-1``'s PPO policy
after that) into a labelling database (``ROOT/labels.sqlite``), has them ranked (by a judge, unattended; or by
people: the pipeline stops and names the ``rlhf-lightning label`` command, and goes on when run again once
they are ranked), trains the reward model on every ranking so far, runs PPO from the policy so far against
it, and compares the new policy with the SFT model. PPO's KL reference stays the SFT model in every round
(``labelling.reference: sft``; ``previous`` makes it the round's starting policy, a leash that moves with
the policy), and each round reports the new policy's KL to SFT and to the policy it started from. Each
round's folders are ``ROOT/round-<n>/{reward, ppo, evaluation}``; the summary has one row per round.
"""

from __future__ import annotations

import datetime
import inspect
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhf_lightning.commands.evaluate import evaluate_policies
from rlhf_lightning.commands.export import export_model
from rlhf_lightning.commands.generate import generate_candidates
from rlhf_lightning.commands.label import judge_labels
from rlhf_lightning.data.base import RowsDataModule
from rlhf_lightning.data.degenerate import exploit_message, exploitable
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import LabelStore
from rlhf_lightning.data.prompts import PromptsDataModule
from rlhf_lightning.data.readers import read_rows
from rlhf_lightning.data.split import prompt_group
from rlhf_lightning.evaluation.config import EvalConfig
from rlhf_lightning.evaluation.report import alignment_verdict, markdown_table, read_curve, read_scalars
from rlhf_lightning.models.run_folder import DEGENERATE_FILE, FINAL_FOLDER, HELDOUT_FILE

STAGES = ("sft", "reward", "ppo")
STEPS = (*STAGES, "evaluation", "export")
STATE_FILE, SUMMARY_MD, SUMMARY_JSON = "pipeline.json", "summary.md", "summary.json"
EVALUATION_PROMPTS = "evaluation_prompts.jsonl"
"""The prompts the PPO stage holds out, written by the check before anything trains; the SFT and reward stages
leave them out (``data.exclude_prompts``), so the evaluation's prompts are held out of every stage."""
DATABASE_FILE = "labels.sqlite"
WAITING_FOR_LABELS = 3
"""The pipeline's exit code when it stopped to wait for people's rankings (0: finished)."""


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


@dataclass
class LabellingSpec:
    """Rounds of human (or judge) feedback: candidates from the policy so far, ranked, then reward model and
    PPO on every ranking so far. Fields left empty are taken from the PPO stage's config."""

    rounds: int = 1
    """How many rounds of generate -> label -> reward model -> PPO -> evaluation."""
    prompts: str | None = None
    """Prompts to sample candidates for; default: the PPO stage's ``train_files``. Its held-out split (the PPO
    stage's ``val_fraction`` and ``split_seed``) is never labelled."""
    prompts_per_round: int = 32
    """New prompts labelled each round (round ``n`` takes the next ``prompts_per_round`` of the training split)."""
    num_candidates: int = 4
    """Candidates sampled per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the candidates."""
    max_new_tokens: int | None = None
    """Longest candidate; default: the PPO stage's ``rollout.max_new_tokens``."""
    seed: int = 0
    """Round ``n`` samples with seed ``seed + n``."""
    database: str | None = None
    """The labelling database; default ``ROOT/labels.sqlite``."""
    judge: str | None = None
    """A rule judge, ``module:function`` (the reward-function signature), that ranks every round unattended."""
    constitution: str | None = None
    """Or an LLM judge: a file of principles that ``judge_model`` checks each candidate against."""
    judge_model: str = "embedded"
    """The LLM judge's model."""
    annotators_per_item: int = 1
    """Without a judge: people asked to rank each item."""
    min_labelled: float = 1.0
    """Without a judge: the fraction of a round's items that must be ranked (by ``annotators_per_item`` people)
    before the pipeline goes on."""
    reference: Literal["sft", "previous"] = "sft"
    """PPO's KL reference from round 2 on: ``sft`` keeps it the SFT model, so total drift from SFT stays
    bounded by the KL penalty; ``previous`` makes it the policy the round starts from (the previous round's),
    so each round may drift that far again."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.prompts_per_round < 1 or self.num_candidates < 2:
            raise OptionError("labelling: rounds and prompts_per_round must be >= 1, num_candidates >= 2")
        if self.judge is not None and self.constitution is not None:
            raise OptionError("labelling: give judge or constitution, not both")
        if not 0.0 < self.min_labelled <= 1.0:
            raise OptionError(f"labelling.min_labelled must be in (0, 1], got {self.min_labelled}")
        if self.reference not in ("sft", "previous"):
            raise OptionError(f"labelling.reference: expected sft or previous, got {self.reference!r}")


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stage_arguments(
    stage: str,
    spec: StageSpec,
    root: Path,
    common: dict[str, Any],
    resume: bool,
    folder: Path | None = None,
    policy_start: Path | None = None,
    reward_model: Path | None = None,
    train_files: list[str] | None = None,
    reference: Path | None = None,
    exclude_prompts: list[str] | None = None,
) -> list[str]:
    """The ``fit`` command line of one stage: its config, the common and its own overrides, then the run
    folder (default ``root/stage``) and the folders of the earlier stages: the reward model starts from the
    SFT adapter, PPO from ``policy_start`` (default the SFT adapter) with ``reference`` as its KL reference
    (default: where it starts) and scores with ``reward_model`` (default ``root/reward/final``); ``train_files``
    replaces the stage's data, and the SFT and reward stages leave out the prompts of ``exclude_prompts``."""
    args = ["fit", "--config", spec.config]
    for key, value in {**common, **spec.overrides}.items():
        args.append(f"--{key}={_cli_value(value)}")
    args.append(f"--trainer.default_root_dir={folder or root / stage}")
    sft = root / "sft" / FINAL_FOLDER
    if stage == "reward":
        args.append(f"--model.init_args.model.adapter={sft}")
    if stage == "ppo":
        args.append(f"--model.init_args.model.adapter={policy_start or sft}")
        args.append(f"--model.init_args.reward_model={reward_model or root / 'reward' / FINAL_FOLDER}")
        if reference is not None and reference != (policy_start or sft):
            args.append(f"--model.init_args.reference_adapter={reference}")
    if train_files is not None:
        args.append(f"--data.init_args.train_files={json.dumps(train_files)}")
    if exclude_prompts and stage in ("sft", "reward"):
        key = "data.init_args.exclude_prompts"
        config = yaml.safe_load(Path(spec.config).read_text()) if Path(spec.config).exists() else None
        given = (common | spec.overrides).get(key, (common | spec.overrides).get("data.exclude_prompts"))
        given = given if given is not None else _lookup(config or {}, key)
        given = [given] if isinstance(given, str) else list(given or [])
        args.append(f"--data.init_args.exclude_prompts={json.dumps([*given, *exclude_prompts])}")
    if resume:
        args.append("--ckpt_path=last")
    return args


def _round_of(step: str) -> int | None:
    """``round-2/ppo`` -> 2; ``ppo`` -> None."""
    return int(step.split("/")[0].removeprefix("round-")) if step.startswith("round-") else None


def _last(values: dict) -> tuple[Any, Any]:
    return (max(values), values[max(values)]) if values else (None, None)


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
        labelling: LabellingSpec | None = None,
        degenerate_reward: Literal["stop", "warn"] = "stop",
    ) -> None:
        if degenerate_reward not in ("stop", "warn"):
            raise OptionError(f"degenerate_reward: expected stop or warn, got {degenerate_reward!r}")
        self.degenerate_reward = degenerate_reward
        self.root = Path(root_dir)
        self.specs = {"sft": sft, "reward": reward, "ppo": ppo}
        self.evaluation, self.export, self.common, self.labelling = evaluation, export, common, labelling
        self.state_path = self.root / STATE_FILE
        self.state: dict = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"steps": {}}
        self.database = Path(labelling.database) if labelling and labelling.database else self.root / DATABASE_FILE

    # --- steps and their folders ---------------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        return self.labelling.rounds if self.labelling else 0

    def steps(self) -> list[str]:
        """Every step in order: ``sft, reward, ppo, evaluation, export``; with labelling, ``sft``, then per round
        ``round-<n>/generate``, ``/label``, ``/reward``, ``/ppo``, ``/evaluation``, then ``export``."""
        if not self.labelling:
            return list(STEPS)
        per_round = ("generate", "label", "reward", "ppo", "evaluation")
        return ["sft", *(f"round-{n}/{step}" for n in range(1, self.rounds + 1) for step in per_round), "export"]

    def folder(self, step: str) -> Path | None:
        """The folder a step writes (``None`` for generate and label, which write the labelling database)."""
        return None if step.endswith(("/generate", "/label")) else self.root / step

    def stage_folder(self, stage: str, round: int | None = None) -> Path:
        """``ROOT/<stage>``, or in rounds ``ROOT/round-<n>/<stage>`` (the last round by default); SFT is shared."""
        if not self.labelling or stage == "sft":
            return self.root / stage
        return self.root / f"round-{round or self.rounds}" / stage

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
        steps = self.steps()
        todo = next((s for s in steps if not self.done(s)), None)
        if todo is None:
            return
        later = [self.folder(s) for s in steps[steps.index(todo) + 1 :]]
        stale = [f for f in later if f is not None and f.exists()]
        if stale:
            raise SystemExit(
                f"error: the pipeline would rerun '{todo}', but {', '.join(map(str, stale))} hold results built on "
                f"the previous '{todo}'. Delete them (and the '{todo}' folder to restart it from scratch), or use "
                "another root_dir."
            )

    def evaluation_prompts(self) -> list[str]:
        """Every prompt file the evaluations read: the PPO stage's held-out prompts as the check wrote them (once
        it has, and when it holds any out), and ``evaluation.prompts`` when given."""
        path = self.root / EVALUATION_PROMPTS
        written = [str(path)] if path.exists() and path.stat().st_size > 0 else []
        return written + ([self.evaluation.prompts] if self.evaluation.prompts else [])

    def warn_trained_evaluation_prompts(self) -> None:
        """A warning when ``evaluation.prompts`` shares prompts with the PPO stage's training split: the
        evaluation would measure prompts PPO trained on (the SFT and reward stages leave them out)."""
        if not self.evaluation.prompts:
            return
        data = _lookup(self._ppo_config(), "data.init_args") or {}
        files = data.get("train_files", "builtin:prompts.jsonl")
        held = {prompt_group(row) for _, row in read_rows(str(self.root / EVALUATION_PROMPTS))}
        trained = {prompt_group(row) for f in ([files] if isinstance(files, str) else files) for _, row in read_rows(f)}
        asked = {prompt_group(row) for _, row in read_rows(self.evaluation.prompts)}
        shared = len(asked & (trained - held))
        if shared:
            print(
                f"warning: {shared} of the {len(asked)} prompts in evaluation.prompts ({self.evaluation.prompts}) are "
                f"among the PPO stage's training prompts ({files}); the evaluation measures prompts PPO trained on. "
                "Leave evaluation.prompts empty to evaluate on the prompts PPO holds out, or remove them from one side",
                flush=True,
            )

    # --- training stages -----------------------------------------------------------------------------------
    def run_stage(self, step: str) -> None:
        stage, n = step.rsplit("/", 1)[-1], _round_of(step)
        folder = self.stage_folder(stage, n)
        resume = (folder / "checkpoints" / "last.ckpt").exists()
        extra: dict[str, Any] = {}
        if n is not None:
            extra = {"folder": folder, "reward_model": self.stage_folder("reward", n) / FINAL_FOLDER}
            extra["policy_start"] = self.policy_before(n)
            if stage == "ppo" and self.labelling.reference == "sft":
                extra["reference"] = self.root / "sft" / FINAL_FOLDER
            if stage == "reward":
                extra["train_files"] = [str(self.database)]
        args = stage_arguments(stage, self.specs[stage], self.root, self.common, resume,
                               exclude_prompts=self.evaluation_prompts(), **extra)  # fmt: skip
        print(f"\n=== {step}: {'resuming from its last checkpoint' if resume else 'starting'} ===", flush=True)
        print("rlhf-lightning " + " ".join(args), flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "rlhf_lightning.cli", *args])
        if code != 0:
            raise SystemExit(
                f"error: the {step} stage stopped (exit code {code}). Fix the cause and run the same pipeline "
                f"command again: finished stages are skipped and {step} resumes from its last checkpoint."
            )
        if not (folder / FINAL_FOLDER).exists():
            raise SystemExit(f"error: the {step} stage ended without writing {folder / FINAL_FOLDER}")
        self._mark(step, time.perf_counter() - start)

    def check_reward_model(self, n: int | None) -> None:
        """Before PPO: stop (``degenerate_reward: stop``) or warn when the reward stage's degenerate-answer check
        found that an empty or echoed answer (the request repeated) scores above the median real answer on most
        checked prompts (:func:`~rlhf_lightning.data.degenerate.exploitable`): a policy would learn to answer so."""
        check = self.stage_folder("reward", n) / FINAL_FOLDER / DEGENERATE_FILE
        if not check.exists():
            return
        report = json.loads(check.read_text())
        flagged = exploitable(report)
        if not flagged:
            return
        message = (
            f"{exploit_message(report, flagged, str(check.parent))}. In the pipeline: put that in the reward "
            f"stage's overrides and delete {check.parents[1]} and what follows it; or set degenerate_reward: warn "
            "to go on"
        )
        if self.degenerate_reward == "stop":
            raise SystemExit(f"error: {message}")
        print(f"warning: {message}", flush=True)

    def policy_before(self, n: int) -> Path:
        """The policy round ``n`` starts from: the SFT model, then the previous round's PPO policy."""
        return self.root / "sft" / FINAL_FOLDER if n == 1 else self.stage_folder("ppo", n - 1) / FINAL_FOLDER

    # --- labelling -----------------------------------------------------------------------------------------
    def _ppo_config(self) -> dict:
        """The PPO stage's config file with the common and the stage's overrides applied (dotted keys;
        ``model.X`` and ``data.X`` mean ``model.init_args.X`` and ``data.init_args.X``, as on the command line)."""
        config = yaml.safe_load(Path(self.specs["ppo"].config).read_text()) or {}
        for key, value in {**self.common, **self.specs["ppo"].overrides}.items():
            parts = key.split(".")
            if parts[0] in ("model", "data") and len(parts) > 1 and parts[1] != "init_args":
                parts.insert(1, "init_args")
            node = config
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        return config

    def run_generate(self, step: str) -> None:
        n, spec = _round_of(step), self.labelling
        print(f"\n=== {step}: candidates from {self.policy_before(n)} ===", flush=True)
        start = time.perf_counter()
        ppo = self._ppo_config()
        data, rollout = _lookup(ppo, "data.init_args") or {}, _lookup(ppo, "model.init_args.rollout") or {}
        defaults = {  # the prompts DataModule's own defaults, then those it shares with every DataModule
            k: p.default
            for cls in (RowsDataModule, PromptsDataModule)
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        data = {**defaults, **data}
        if data.get("val_files"):  # PPO evaluates on other files: every training prompt may be labelled
            data["val_fraction"] = 0.0
        generate_candidates(
            policy=str(self.policy_before(n)),
            prompts=spec.prompts or data.get("train_files", "builtin:prompts.jsonl"),
            database=str(self.database),
            num_candidates=spec.num_candidates,
            temperature=spec.temperature,
            max_new_tokens=spec.max_new_tokens or rollout.get("max_new_tokens", 64),
            seed=spec.seed + n,
            round=n,
            first_prompt=(n - 1) * spec.prompts_per_round,
            max_prompts=spec.prompts_per_round,
            val_fraction=data["val_fraction"],
            split_seed=data["split_seed"],
            max_length=data["max_length"],
            overlong=data["overlong"],
            stop_tokens=rollout.get("stop_tokens"),
            progress=self.common.get("trainer.enable_progress_bar", True) is not False,
        )
        self._mark(step, time.perf_counter() - start)

    def run_label(self, step: str) -> bool:
        """Rank round ``n``'s candidates with the judge, or check that people have; ``False`` while they have not."""
        n, spec = _round_of(step), self.labelling
        start = time.perf_counter()
        store = LabelStore(self.database)
        if store.round_progress(n)[0] == 0:
            raise SystemExit(
                f"error: round {n} has no prompt with two different candidates to rank in {self.database}; sample "
                "more varied ones (labelling.temperature, labelling.num_candidates, labelling.max_new_tokens)"
            )
        if spec.judge or spec.constitution:
            print(f"\n=== {step}: ranked by the judge {spec.judge or spec.constitution} ===", flush=True)
            judge_labels(str(self.database), judge=spec.judge, constitution=spec.constitution,
                         judge_model=spec.judge_model, progress=False)  # fmt: skip
        else:
            if store.annotators_per_item != spec.annotators_per_item:
                store.annotators_per_item = spec.annotators_per_item
            items, complete = store.round_progress(n)
            if complete < spec.min_labelled * items:
                print(
                    f"\n=== {step}: waiting for rankings: {complete} of {items} items of round {n} are ranked (or "
                    f"skipped) by {spec.annotators_per_item} annotator(s) ({spec.min_labelled:.0%} needed). Rank "
                    f"them in the browser:\n\n    rlhf-lightning label {self.database}\n\nthen run the same pipeline "
                    "command again; it goes on from here. ===",
                    flush=True,
                )
                return False
            print(f"\n=== {step}: {complete} of {items} items ranked or skipped ===", flush=True)
        self._mark(step, time.perf_counter() - start)
        return True

    # --- evaluation and export -----------------------------------------------------------------------------
    def evaluation_arguments(self, ppo_folder: Path | None = None) -> dict[str, Any]:
        """The evaluation's settings: those given in ``evaluation``, the rest from the PPO run's resolved
        ``config.yaml`` (its prompts and held-out split, response length, gold function and seed)."""
        ev = self.evaluation
        ppo_folder = ppo_folder or self.root / "ppo"
        resolved = yaml.safe_load((ppo_folder / "config.yaml").read_text())

        def ppo(dotted: str, given: Any = None) -> Any:
            return given if given is not None else _lookup(resolved, dotted)

        heldout = ppo_folder / HELDOUT_FILE
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

    def run_evaluation(self, step: str = "evaluation") -> None:
        n = _round_of(step)
        print(f"\n=== {step}: PPO policy vs SFT model on held-out prompts ===", flush=True)
        start = time.perf_counter()
        ppo_folder = self.stage_folder("ppo", n)
        prompts = self.evaluation_arguments(ppo_folder)
        evaluate_policies(
            policy=str(ppo_folder / FINAL_FOLDER),
            baseline=str(self.root / "sft" / FINAL_FOLDER),
            reward_model=str(self.stage_folder("reward", n) / FINAL_FOLDER),
            output=str(self.stage_folder("evaluation", n)),
            previous=str(self.policy_before(n)) if n is not None and n > 1 else None,
            **prompts,
        )
        self._mark(step, time.perf_counter() - start)

    def run_export(self) -> None:
        print("\n=== export: merged Hugging Face folders ===", flush=True)
        start = time.perf_counter()
        for name, stage in (("policy", "ppo"), ("reward", "reward")):
            export_model(str(self.stage_folder(stage) / FINAL_FOLDER), str(self.root / "export" / name), overwrite=True)
        self._mark("export", time.perf_counter() - start)

    def check_inputs(self) -> None:
        """Read and check every file of every stage still to run, before the first trains: each stage's data,
        calibration files, stop tokens and score functions (``rlhf-lightning check`` on its arguments), and the
        evaluation's and the labelling's prompts with the PPO stage's data settings. A bad row or option stops
        the pipeline here, with the stage named, rather than after the stages before it have trained."""
        todo = [s for s in self.steps() if not self.done(s)]
        prompts = [p for p in (self.evaluation.prompts, self.labelling.prompts if self.labelling else None) if p]
        wanted = {s.rsplit("/", 1)[-1] for s in todo}
        if prompts and wanted & {"evaluation", "generate"}:
            wanted.add("ppo")
        order = ["ppo", *(s for s in STAGES if s != "ppo")]  # PPO's held-out prompts first: the others leave them out
        if wanted & {"sft", "reward"}:
            wanted.add("ppo")
        for stage in (s for s in order if s in wanted):
            args = stage_arguments(stage, self.specs[stage], self.root, self.common, resume=False,
                                   exclude_prompts=self.evaluation_prompts())  # fmt: skip
            args[0] = "check"
            args.append("--check.skip_folders")  # the earlier stages write them
            if stage == "ppo":
                self.root.mkdir(parents=True, exist_ok=True)
                args.append(f"--check.write_heldout={self.root / EVALUATION_PROMPTS}")
            if stage == "reward" and self.labelling:
                if self.database.exists():
                    args.append(f"--data.init_args.train_files={json.dumps([str(self.database)])}")
                else:  # the rankings come later, from the rounds
                    args.append("--check.skip_data")
            if stage == "ppo" and prompts:
                args.append(f"--check.prompts={json.dumps(prompts)}")
            print(f"=== check: the {stage} stage's files and options ===", flush=True)
            code = subprocess.call([sys.executable, "-m", "rlhf_lightning.cli", *args])
            if code != 0:
                raise SystemExit(
                    f"error: the {stage} stage's check failed (above); nothing has trained. Fix it and run the "
                    "same pipeline command again."
                )
            if stage == "ppo":
                self.warn_trained_evaluation_prompts()

    def run(self) -> dict:
        """Check every stage's inputs (:meth:`check_inputs`), then run every step not done yet and return the
        summary. Exits with :data:`WAITING_FOR_LABELS` when a round waits for people's rankings."""
        self._check_not_stale()
        self.check_inputs()
        ran = False  # once a step runs, every later one runs again: its results would be built on the old output
        for step in self.steps():
            name = step.rsplit("/", 1)[-1]
            if self.done(step) and not ran:
                print(f"=== {step}: done earlier, skipped (see {self.state_path}) ===", flush=True)
                continue
            ran = True
            if name == "ppo":
                self.check_reward_model(_round_of(step))
            if name in STAGES:
                self.run_stage(step)
            elif name == "generate":
                self.run_generate(step)
            elif name == "label":
                if not self.run_label(step):
                    raise SystemExit(WAITING_FOR_LABELS)
            elif name == "evaluation":
                self.run_evaluation(step)
            elif self.export:
                self.run_export()
        return self.write_summary()

    # --- summary -------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        root = self.root

        def first_last(folder: Path, tag: str) -> tuple[float | None, float | None]:
            values = read_scalars(folder, tag)
            return (next(iter(values.values())), values[max(values)]) if values else (None, None)

        sft_first, sft_last = first_last(root / "sft", "train/loss")
        _, sft_val = first_last(root / "sft", "val/loss")
        reward, ppo = self.stage_folder("reward"), self.stage_folder("ppo")
        _, accuracy = first_last(reward, "val/accuracy")
        score_first, score_last = first_last(ppo, "objective/scores")
        kl_first, kl_last = first_last(ppo, "objective/kl")
        evaluation = json.loads((self.stage_folder("evaluation") / "evaluation.json").read_text())["summary"]
        check = reward / FINAL_FOLDER / DEGENERATE_FILE
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
        if self.labelling:
            summary["rounds"] = [self.round_summary(n) for n in range(1, self.rounds + 1)]
        summary["verdict"] = alignment_verdict(evaluation, read_curve(ppo))
        return summary

    def round_summary(self, n: int) -> dict[str, Any]:
        """One round's figures: rankings it added and used, and its reward model's, PPO's and evaluation's."""
        rankings = [j for j in LabelStore(self.database).judgements() if j["round"] <= n]
        _, accuracy = _last(read_scalars(self.stage_folder("reward", n), "val/accuracy"))
        _, kl = _last(read_scalars(self.stage_folder("ppo", n), "objective/kl"))
        evaluation = json.loads((self.stage_folder("evaluation", n) / "evaluation.json").read_text())["summary"]
        return {
            "round": n,
            "rankings_new": sum(j["round"] == n for j in rankings),
            "rankings_total": len(rankings),
            "reward/val_accuracy": accuracy,
            "ppo/kl_last_iteration": kl,
            "ppo/reference": "SFT" if n == 1 or self.labelling.reference == "sft" else f"round {n - 1}",
            **{f"eval/{k}": v for k, v in evaluation.items()},
        }

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
        if s.get("rounds"):
            rows.insert(2, ("Rounds of feedback", f"{len(s['rounds'])} (the rows below describe the last)"))
            if self.labelling.reference == "previous":  # the last round's PPO measured KL to where it started
                kl_to_start = "PPO: KL to the round's starting policy, nats (first → last iteration)"
                rows = [(kl_to_start, v) if k.startswith("PPO: KL to SFT") else (k, v) for k, v in rows]
        seconds = s["seconds"]
        total = sum(v for v in seconds.values() if v)
        rows.append(
            (
                "Time, minutes",
                f"{total / 60:.1f} (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items() if v) + ")",
            )
        )
        return markdown_table(["", "value"], rows, numbered=False)

    @staticmethod
    def rounds_table(rounds: list[dict[str, Any]]) -> str:
        """One row per round: rankings, the reward model's accuracy, PPO's KL, and the held-out comparison with
        the SFT model (reward-model win rate, and the gold score when the run has a gold function)."""

        def f(value, digits: int = 3) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        header = ["round", "rankings (new / all)", "reward accuracy", "PPO reference", "PPO KL to its reference",
                  "KL to SFT", "KL to the round's start", "win rate vs SFT (RM)", "gold: policy vs SFT",
                  "gold win rate"]  # fmt: skip
        rows = [
            (
                r["round"],
                f"{r['rankings_new']} / {r['rankings_total']}",
                f(r["reward/val_accuracy"]),
                r.get("ppo/reference", "SFT"),
                f(r["ppo/kl_last_iteration"]),
                f(r.get("eval/policy_kl")),
                f(r.get("eval/policy_kl_previous", r.get("eval/policy_kl"))),
                f(r.get("eval/win_rate")),
                f"{f(r.get('eval/gold_policy'))} vs {f(r.get('eval/gold_baseline'))}",
                f(r.get("eval/gold_win_rate")),
            )
            for r in rounds
        ]
        return markdown_table(header, rows, numbered=False)

    def write_summary(self) -> dict:
        summary = self.summary()
        table = self.summary_table(summary)
        (self.root / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        lines = [f"# Pipeline summary: {self.root}", "", table, "", f"**In words:** {summary['verdict']}", ""]
        if summary.get("rounds"):
            lines += ["## Rounds", "", self.rounds_table(summary["rounds"]), ""]
            lines += [f"- labelling database: `{self.database}`"]
        lines += [f"- {stage}/{FINAL_FOLDER}: `{self.stage_folder(stage) / FINAL_FOLDER}`" for stage in STAGES]
        lines += [f"- evaluation: `{self.stage_folder('evaluation') / 'evaluation.md'}`"]
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
    labelling: LabellingSpec | None = None,
    degenerate_reward: Literal["stop", "warn"] = "stop",
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
        labelling: Rounds of feedback on the policy's own candidates (see the module's documentation); without
            it the reward model trains on its config's data once.
        degenerate_reward: What happens before PPO when the reward stage's degenerate-answer check finds that an
            empty or echoed answer scores above the median real answer on most checked prompts: ``stop`` (the
            message gives the figures and the fix) or ``warn`` and go on.

    Returns:
        The summary. When a round waits for people's rankings, the pipeline prints the command to run and exits
        with code 3 (:data:`WAITING_FOR_LABELS`).
    """
    pipeline = Pipeline(
        root_dir, sft, reward, ppo, evaluation, export, dict(common or {}), labelling, degenerate_reward
    )
    pipeline.root.mkdir(parents=True, exist_ok=True)
    (pipeline.root / "pipeline_config.yaml").write_text(
        yaml.safe_dump(
            {
                "root_dir": root_dir,
                **{k: asdict(v) for k, v in pipeline.specs.items()},
                "evaluation": asdict(evaluation),
                "export": export,
                "common": pipeline.common,
                "labelling": asdict(labelling) if labelling else None,
                "degenerate_reward": degenerate_reward,
            },
            sort_keys=False,
        )
    )
    return pipeline.run()
