"""Comparing two policies on the same prompts, and reporting it: pure comparison over callables that sample
and score (:mod:`~rlhf_lightning.evaluation.compare`), markdown tables and the over-optimisation curve
(:mod:`~rlhf_lightning.evaluation.report`). Loading models for a comparison is the ``evaluate`` command's."""

from rlhf_lightning.evaluation.compare import compare_batch, eos_penalty, kl_temperature, summarize, win
from rlhf_lightning.evaluation.config import EvalConfig
from rlhf_lightning.evaluation.report import (
    markdown_table,
    overoptimization_point,
    overoptimization_table,
    read_scalars,
    report_markdown,
    samples_table,
    short_prompt,
)

__all__ = [
    "EvalConfig",
    "compare_batch",
    "eos_penalty",
    "kl_temperature",
    "markdown_table",
    "overoptimization_point",
    "overoptimization_table",
    "read_scalars",
    "report_markdown",
    "samples_table",
    "short_prompt",
    "summarize",
    "win",
]
