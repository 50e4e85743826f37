"""A table of prompts and the model's current responses, written to TensorBoard's text tab."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from rlhf_lightning.data.chat import stop_token_ids
from rlhf_lightning.evaluation.report import markdown_table
from rlhf_lightning.models.generation import GenerationConfig, generate, generation_eos_ids, seeded


@dataclass
class SampleConfig:
    """At the start, every ``every_n_steps`` optimizer steps and at the end, generate responses to a few validation
    prompts and log them as a table in TensorBoard (TEXT tab, tag ``samples``)."""

    every_n_steps: int = 50
    """0 turns the table off."""
    num_prompts: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0 is greedy: successive tables then differ only because the model changed. Sampled tables draw from
    their own generator, so they never change the training run."""

    def __post_init__(self) -> None:
        for name in ("every_n_steps", "num_prompts", "temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"samples.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"samples.max_new_tokens must be >= 1, got {self.max_new_tokens}")


def samples_markdown(rows: list[tuple[str, str]]) -> str:
    return markdown_table(["prompt", "response"], rows)


class GenerationSamples(L.Callback):
    """Needs ``pl_module.model`` and ``pl_module.tokenizer``, and ``sample_prompts(n)`` on the DataModule."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        self._last_step = -1

    @rank_zero_only
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or not isinstance(trainer.logger, TensorBoardLogger):
            return
        self._last_step = step
        tokenizer = pl_module.tokenizer
        source = getattr(trainer, "datamodule", None)
        prompts = source.sample_prompts(self.config.num_prompts) if hasattr(source, "sample_prompts") else []
        if not prompts:
            return
        gen = GenerationConfig(max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature)
        stops = stop_token_ids(tokenizer, generation_eos_ids(pl_module.model))
        with seeded(step, pl_module.device):
            responses = generate(pl_module.model, prompts, gen, stops, tokenizer.pad_token_id)
        rows = [
            (tokenizer.decode(p, skip_special_tokens=False), tokenizer.decode(r, skip_special_tokens=False))
            for p, r in zip(prompts, responses)
        ]
        trainer.logger.experiment.add_text("samples", samples_markdown(rows), global_step=step)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.config.every_n_steps > 0:
            self._log(trainer, pl_module)  # the starting point, to compare later tables against

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.config.every_n_steps
        if every > 0 and trainer.global_step % every == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.config.every_n_steps > 0:
            self._log(trainer, pl_module)
