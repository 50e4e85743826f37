"""The PPO stage's evaluation on held-out prompts: the policy against the SFT reference, both scored by the
reward model (and a gold function when given), with the KL, as :mod:`rlhf_lightning.evaluation.compare`
defines it, so ``rlhf-lightning evaluate`` gives the same numbers. Also the over-optimisation curve (scores
against KL at each evaluation) and the sample table.

:class:`PPOEvaluation` holds the LightningModule hooks (``validation_step`` and the epoch end, the sample
table after training batches, the held-out prompts record at fit start); :class:`~rlhf_lightning.modules.ppo.
module.PPOModule` inherits them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from rlhf_lightning.evaluation.compare import compare_batch, kl_temperature, summarize
from rlhf_lightning.evaluation.report import (
    markdown_table,
    overoptimization_point,
    overoptimization_table,
    samples_table,
    short_prompt,
)
from rlhf_lightning.models.adapters import sequence_kl
from rlhf_lightning.models.generation import seeded
from rlhf_lightning.models.run_folder import HELDOUT_FILE
from rlhf_lightning.modules.ppo.rollout import penalty

SIDES = ("policy", "reference")  # the evaluation compares the policy with the reference


class PPOEvaluation:
    """Evaluation hooks of the PPO module (see the module docstring)."""

    _eval_records: list[dict]
    overoptimization: list[dict]

    def eval_temperature(self) -> float:
        t = self.eval_config.temperature
        return self.rollout_config.temperature if t is None else t

    def sequence_kl(self, sequences, attention_mask, mask, temperature: float) -> torch.Tensor:
        """KL ``(b,)`` of the policy's responses to the reference at ``temperature``."""
        policy, reference = self.roles["policy"], self.roles["reference"]
        return sequence_kl(policy, reference, sequences, attention_mask, mask, temperature, self.logprob_chunk_size)

    @torch.no_grad()
    def evaluate_batch(self, batch: dict, index: int = 0) -> list[dict]:
        """Policy and reference responses to one batch of prompts, each with its raw score and missing-EOS
        penalty, and the policy's KL to the reference at the evaluation temperature; sampled from the
        evaluation's own generator (``evaluation.seed + index``)."""
        temperature = self.eval_temperature()
        samplers = {side: functools.partial(self.sample, role=side, temperature=temperature) for side in SIDES}
        return compare_batch(
            batch["input_ids"],
            batch["attention_mask"],
            samplers,
            score=self.score,
            tokenizer=self.tokenizer,
            kl=lambda side, seq, att, mask: self.sequence_kl(seq, att, mask, kl_temperature(temperature)),
            kl_sides=["policy"],
            gold_fn=self.gold_fn,
            penalty=lambda scores, ended, empty: penalty(scores, ended, empty, self.shaping),
            prompt_texts=batch.get("prompt_text"),
            seed=self.eval_config.seed + index,
        )

    @staticmethod
    def summarize(records: list[dict]) -> dict[str, float]:
        """``eval/*`` means over the evaluation records, and win rates (ties count half)."""
        return {f"eval/{k}": v for k, v in summarize(records, *SIDES).items()}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_records.extend(self.evaluate_batch(batch, batch_idx))

    def on_validation_epoch_end(self) -> None:
        records, self._eval_records = self._eval_records, []
        if not records or self.trainer.sanity_checking:  # a sanity check's few batches are no evaluation
            return
        summary = self.summarize(records)
        self.log_dict(summary, sync_dist=True)
        self.write_table("evaluation", samples_table(records, *SIDES, limit=self.eval_config.num_samples))
        reduce = self.trainer.strategy.reduce
        summary = {k: float(reduce(torch.tensor(v, device=self.device), reduce_op="mean")) for k, v in summary.items()}
        # inside fit, the loop validates after an iteration's update but before counting it
        self.track_overoptimization(summary, self.iteration + (self.trainer.state.fn == "fit"))

    def track_overoptimization(self, summary: dict[str, float], iterations: int) -> None:
        """Add this evaluation to the curve of reward-model and gold score against KL
        (:func:`rlhf_lightning.evaluation.report.overoptimization_point`), labelled with the ``iterations`` done
        (evaluating again after the same iteration replaces the point), and show it in TensorBoard: the table
        ``overoptimization`` under TEXT, and the scalars ``overoptimization/reward_model_score`` and
        ``overoptimization/gold_score`` whose *step is the KL in millinats*, so the chart's x-axis is the KL.

        TensorBoard keeps a series' steps increasing (a step at or below an earlier one drops the earlier
        points), so the whole curve is written again in KL order at each evaluation, starting with the
        reference at step 0: the chart always shows the latest curve."""
        plain = {k.removeprefix("eval/"): v for k, v in summary.items()}
        point = overoptimization_point(plain, *SIDES, iterations)
        if point is None:
            return
        self.overoptimization = [p for p in self.overoptimization if p["at"] != point["at"]] + [point]
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_scalar"):
            return
        first = self.overoptimization[0]
        curve = [(0, first["baseline_score"], first.get("baseline_gold"))]
        for p in sorted(self.overoptimization, key=lambda p: p["kl"]):
            curve.append((max(1, round(1000 * p["kl"])), p["score"], p.get("gold")))
        for step, score, gold in curve:
            experiment.add_scalar("overoptimization/reward_model_score", score, step)
            if gold is not None:
                experiment.add_scalar("overoptimization/gold_score", gold, step)
        self.write_table("overoptimization", overoptimization_table(self.overoptimization))

    def comparison_settings(self, batch_size: int) -> dict:
        """Everything ``rlhf-lightning evaluate`` needs to give this evaluation's numbers."""
        datamodule = self.trainer.datamodule
        shaping = self.shaping
        return {
            "prompts": HELDOUT_FILE if datamodule.val_examples else datamodule.train_files,
            "max_length": datamodule.max_length,
            "overlong": datamodule.overlong,
            "chat_template": datamodule.chat_template,
            "batch_size": batch_size,
            "seed": self.eval_config.seed,
            "temperature": self.eval_temperature(),
            "max_new_tokens": self.rollout_config.max_new_tokens,
            "stop_tokens": self.rollout_config.stop_tokens,
            "missing_eos_penalty": shaping.missing_eos_penalty,
            "missing_eos_mode": shaping.missing_eos_mode,
            "penalize_empty": shaping.penalize_empty,
        }

    def evaluate(self) -> dict:
        """Run the evaluation over the eval prompts (the training prompts if there are none). Returns the
        summary, every record, and the settings ``rlhf-lightning evaluate`` needs to give the same numbers."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ValueError("evaluation needs the prompts DataModule (pass datamodule= to the trainer)")
        loader = datamodule.val_dataloader() or datamodule.train_dataloader()
        records = []
        for index, batch in enumerate(loader):
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            records.extend(self.evaluate_batch(batch, index))
        return {
            "settings": self.comparison_settings(loader.batch_size),
            "summary": self.summarize(records),
            "records": records,
        }

    def write_table(self, tag: str, markdown: str) -> None:
        logger = self.logger
        if logger is not None and hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text(tag, markdown, global_step=self.iteration)

    @torch.no_grad()
    def log_samples(self) -> None:
        """The sample table: the policy's responses to the first eval prompts, with raw score and KL, from the
        table's own generator (the training run's random state is left as it was)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        batch = datamodule.sample_batch(self.eval_config.num_samples) if hasattr(datamodule, "sample_batch") else None
        if batch is None:
            return
        ids, prompt_mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        temperature = self.eval_temperature()
        with seeded(self.eval_config.seed + self.iteration, self.device):
            sequences, attention_mask, mask, ended = self.sample(ids, prompt_mask, "policy", temperature)
        scores = self.score(sequences, attention_mask, ids.shape[1], batch["prompt_text"])
        kl = self.sequence_kl(sequences, attention_mask, mask, kl_temperature(temperature))
        decode = self.tokenizer.decode
        rows = [
            (short_prompt(text), decode(sequences[i, ids.shape[1] :][mask[i]], skip_special_tokens=True),
             scores[i].item(), kl[i].item())
            for i, text in enumerate(batch["prompt_text"])
        ]  # fmt: skip
        self.write_table("samples", markdown_table(["prompt", "response", "score", "KL"], rows))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.eval_config.samples_every_n_iterations
        if every > 0 and self.iteration % every == 0 and self.trainer.is_global_zero:
            self.log_samples()

    def record_heldout_prompts(self) -> None:
        """Write the evaluation prompts to the run folder's ``heldout_prompts.jsonl`` (a prompts file), so a
        later ``rlhf-lightning evaluate`` can use exactly these (with the run's ``max_length`` and
        ``overlong``: the rows are written as they were read, before any cut)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not getattr(datamodule, "val_examples", None) or not hasattr(datamodule, "write_heldout"):
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective call under DDP
        if self.trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            count = datamodule.write_heldout(folder / HELDOUT_FILE)
            rank_zero_info(f"ppo: {count} held-out evaluation prompts recorded in {folder / HELDOUT_FILE}")

    def evaluate_at_end(self) -> dict:
        """The evaluation at the end of training, logged, added to the curve and returned for ``evaluation.json``."""
        self.eval()
        evaluation = self.evaluate()
        self.train()
        if self.logger is not None:
            self.logger.log_metrics(evaluation["summary"], step=self.iteration)
        self.track_overoptimization(evaluation["summary"], self.iteration)
        evaluation["overoptimization"] = self.overoptimization
        self.write_table("evaluation", samples_table(evaluation["records"], *SIDES, limit=self.eval_config.num_samples))
        rank_zero_info("ppo evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation["summary"].items()))
        return evaluation


__all__ = ["SIDES", "PPOEvaluation"]
