"""``rlhf-lightning evaluate``: compare two policies on the same prompts, with the definition the PPO stage's
own evaluation uses (:mod:`rlhf_lightning.evaluation.compare`), so the two give identical numbers for the
same prompts, seed and batch size. Each policy is a run's ``final`` folder (an adapter on a base model) or a
Hugging Face model folder:

    rlhf-lightning evaluate --policy runs/quickstart/ppo/final --baseline runs/quickstart/sft/final \\
        --reward_model runs/quickstart/reward/final --prompts builtin:prompts.jsonl --val_fraction 0.1 \\
        --output runs/quickstart/evaluation

It writes ``evaluation.json`` (summary and every record) and ``evaluation.md`` (summary and samples).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

from rlhf_lightning.data.chat import ChatTemplateMode, stop_token_ids, text_rows_as_chat
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.prompts import PromptsDataModule
from rlhf_lightning.data.readers import shipped_default_warning, shipped_task
from rlhf_lightning.evaluation.compare import Sampler, compare_batch, eos_penalty, kl_temperature, summarize
from rlhf_lightning.evaluation.config import EvalConfig
from rlhf_lightning.evaluation.report import markdown_table, overoptimization_point, report_markdown
from rlhf_lightning.models.adapters import Role, RoleLoader, role_scores, sample_from_role, sequence_kl
from rlhf_lightning.models.config import DType, ModelConfig, Quantization
from rlhf_lightning.models.generation import GenerationConfig, generation_eos_ids, left_pad
from rlhf_lightning.models.loading import load_tokenizer, resolve_device
from rlhf_lightning.models.run_folder import EVALUATION_FILE, RunFolder
from rlhf_lightning.models.score_function import ScoreFunction, require_finite

log = logging.getLogger(__name__)

JSON_FILE, MARKDOWN_FILE = EVALUATION_FILE, "evaluation.md"
DEFAULT_TEMPERATURE = GenerationConfig.temperature


def _tokenizer_of(path: str):
    return load_tokenizer(RunFolder(path).tokenizer_source)


def _check_same_vocabulary(tokenizer, paths: dict[str, str]) -> None:
    vocab = tokenizer.get_vocab()
    for name, path in paths.items():
        other = _tokenizer_of(path)
        if other.get_vocab() != vocab:
            raise ValueError(f"the {name} {path} uses another tokenizer than the policy; scores and KL need one")


def load_prompts(
    tokenizer,
    prompts: str | list[str],
    val_fraction: float,
    split_seed: int,
    max_length: int,
    max_prompts: int | None,
    overlong: Literal["truncate", "drop"] = "drop",
    chat_template: str = "auto",
    split: Literal["heldout", "train"] = "heldout",
) -> list:
    """Prompt examples (token ids and the text tables show) from a prompts file (PPO's format); with
    ``val_fraction`` only the held-out split that a PPO run with the same file, fraction and seed kept for
    evaluation (``split="train"``: the rest, the prompts it trained on)."""
    data = PromptsDataModule(
        train_files=prompts,
        val_fraction=val_fraction,
        split_seed=split_seed,
        max_length=max_length,
        overlong=overlong,
        chat_template=chat_template,
    )
    data.tokenizer = tokenizer
    data.setup("fit")
    for source in data.train_files:
        if shipped_task(source):
            log.info(f"prompts: {source} are the {shipped_task(source)}'s prompts, shipped with the package "
                     "(--prompts for your own)")  # fmt: skip
    examples = data.val_examples if val_fraction > 0 and split == "heldout" else data.train_examples
    return examples[:max_prompts]


def evaluate_policies(
    policy: str,
    baseline: str,
    reward_model: str,
    output: str,
    prompts: str | list[str] = "builtin:prompts.jsonl",
    reference: str | None = None,
    previous: str | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    max_prompts: int | None = None,
    max_length: int = 256,
    overlong: Literal["truncate", "drop"] = "drop",
    chat_template: ChatTemplateMode | None = None,
    max_new_tokens: int = 64,
    stop_tokens: list[str] | None = None,
    missing_eos_penalty: float | None = 1.0,
    missing_eos_mode: Literal["subtract", "replace"] = "subtract",
    penalize_empty: bool = True,
    batch_size: int = 16,
    evaluation: EvalConfig = EvalConfig(num_samples=8),  # noqa: B008 - a dataclass default shows its fields in --help
    temperature: float | None = None,
    seed: int | None = None,
    gold_function: str | None = None,
    num_samples: int | None = None,
    device: str = "auto",
    dtype: DType = "float32",
    quantization: Quantization = "none",
) -> dict:
    """Compare ``policy`` with ``baseline`` on the same prompts; write evaluation.json and evaluation.md.

    The numbers follow the definition in this module's docstring, the one the PPO stage's own evaluation
    uses: with the prompts PPO held out (its run folder's ``heldout_prompts.jsonl``), its seed
    (``evaluation.seed``), batch size and temperature, the two give the same numbers.

    Args:
        policy: The policy to evaluate: a run's ``final`` folder (SFT or PPO), a model folder, or a hub id.
        baseline: The policy to compare against, in the same forms (usually the SFT run's ``final``).
        reward_model: A reward run's ``final`` folder; it scores both sides' responses.
        output: Folder for ``evaluation.json`` and ``evaluation.md``.
        prompts: Prompts in the PPO stage's formats (a file, ``builtin:NAME`` or ``hf:OWNER/NAME``), for
            example a PPO run folder's ``heldout_prompts.jsonl``.
        reference: The model KL is measured to (default: ``baseline``), in the same forms.
        previous: Another model, in the same forms, to also measure the policy's KL to (``policy_kl_previous``):
            in rounds of feedback, the policy the round started from, beside the KL to SFT.
        val_fraction: When > 0, use only the held-out split a PPO run with the same ``prompts``,
            ``val_fraction``, ``split_seed``, ``max_length`` and ``overlong`` evaluated on; 0 uses every prompt.
        split_seed: Seed of that split (the prompts DataModule's ``split_seed``).
        max_prompts: Evaluate at most this many prompts.
        max_length: Longest prompt in tokens.
        overlong: What happens to a longer prompt, as in the prompts DataModule: ``drop`` or ``truncate``.
        chat_template: How text prompts are formatted, as the prompts DataModule's option (``auto``,
            ``always``, ``never``); default: as the policy's run formatted them (``auto`` for a model folder).
        max_new_tokens: Longest response.
        stop_tokens: More tokens that end a response, as PPO's ``rollout.stop_tokens``.
        missing_eos_penalty: PPO's ``rewards.missing_eos_penalty``, reported per side as ``*_eos_penalty``.
        missing_eos_mode: PPO's ``rewards.missing_eos_mode``.
        penalize_empty: PPO's ``rewards.penalize_empty``: an empty response gets the missing-EOS penalty too.
        batch_size: Prompts per generation batch.
        evaluation: The comparison's sampling temperature (default 0.7), seed, gold function and sample rows,
            as the PPO stage's ``evaluation`` group.
        temperature: The earlier spelling of ``evaluation.temperature``, still accepted (it wins when given).
        seed: The earlier spelling of ``evaluation.seed``, still accepted.
        gold_function: The earlier spelling of ``evaluation.gold_function``, still accepted.
        num_samples: The earlier spelling of ``evaluation.num_samples``, still accepted.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        dtype: Weight dtype of the base models.
        quantization: Load the base models 4-bit / 8-bit to save memory.
    """
    RunFolder(reward_model).require_stage("reward", what="a reward model folder (the final folder of a reward run)")
    device = resolve_device(device)
    # Everything the user named is checked before any weight is loaded: folders, vocabularies, prompts.
    tokenizer = _tokenizer_of(policy)
    others = {"baseline": baseline, "reward model": reward_model, "reference": reference or baseline}
    if previous is not None:
        others["previous"] = previous
    _check_same_vocabulary(tokenizer, others)
    if batch_size < 1:
        raise OptionError(f"--batch_size must be >= 1, got {batch_size}")
    stop_token_ids(tokenizer, (), stop_tokens or [], "--stop_tokens")  # refused before any weight is loaded
    earlier = {"temperature": temperature, "seed": seed, "gold_function": gold_function, "num_samples": num_samples}
    evaluation = dataclasses.replace(evaluation, **{k: v for k, v in earlier.items() if v is not None})
    gold_fn = ScoreFunction(evaluation.gold_function, "gold_function") if evaluation.gold_function else None
    if evaluation.gold_function:
        what = "the gold figures judge answers to your prompts by that task's rule"
        files = [prompts] if isinstance(prompts, str) else list(prompts)
        message = shipped_default_warning("--gold_function", evaluation.gold_function, files, what, "--prompts")
        if message:
            log.warning(message)
    temperature = DEFAULT_TEMPERATURE if evaluation.temperature is None else evaluation.temperature
    chat_template = chat_template or RunFolder(policy).chat_template
    text_rows_as_chat(tokenizer, chat_template, "--chat_template")  # refused here, naming this command's option
    examples = load_prompts(
        tokenizer, prompts, val_fraction, split_seed, max_length, max_prompts, overlong, chat_template
    )
    if not examples:
        raise ValueError(f"no prompts to evaluate in {prompts} (val_fraction {val_fraction})")
    loader = RoleLoader(ModelConfig(dtype=dtype, quantization=quantization), device)
    sides = {"policy": loader.load(policy, "policy"), "baseline": loader.load(baseline, "baseline")}
    if reference is None or reference == baseline:
        ref_role = sides["baseline"]
    else:
        ref_role = loader.load(reference, "reference")
    previous_role = loader.load(previous, "previous") if previous is not None else None
    reward = loader.load(reward_model, "reward")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    eos = [i for role in sides.values() for i in generation_eos_ids(role.model)]
    stops = stop_token_ids(tokenizer, eos, stop_tokens or [], "--stop_tokens")
    pad = tokenizer.pad_token_id

    def sampler(role: Role) -> Sampler:
        return lambda ids, mask: sample_from_role(role, ids, mask, cfg, stops, pad)

    def score(sequences, attention_mask, prompt_length, prompt_texts):
        return require_finite(role_scores(reward, sequences, attention_mask), f"the reward model {reward_model}")

    def kl(side, sequences, attention_mask, mask):
        t = kl_temperature(temperature)
        to_reference = sequence_kl(sides[side], ref_role, sequences, attention_mask, mask, t)
        if previous_role is None or side != "policy":
            return to_reference
        return {
            "": to_reference,
            "_previous": sequence_kl(sides[side], previous_role, sequences, attention_mask, mask, t),
        }

    def penalty(scores, ended, empty):
        return eos_penalty(scores, ended, missing_eos_penalty, missing_eos_mode, empty if penalize_empty else None)

    kl_sides = [s for s, role in sides.items() if role is not ref_role]
    samplers = {s: sampler(role) for s, role in sides.items()}
    records: list[dict] = []
    for i, start in enumerate(range(0, len(examples), batch_size)):
        batch = examples[start : start + batch_size]
        ids, mask = left_pad([e.input_ids for e in batch], pad, device)
        texts = [e.display for e in batch]
        records.extend(
            compare_batch(
                ids, mask, samplers, score, tokenizer, kl, kl_sides, gold_fn, penalty, texts, evaluation.seed + i
            )
        )
        log.info(f"evaluate: {len(records)}/{len(examples)} prompts")
    summary = summarize(records, "policy", "baseline")
    sources = {
        "policy": policy,
        "baseline": baseline,
        "reward_model": reward_model,
        "reference": reference or baseline,
        **({"previous": previous} if previous is not None else {}),
        "prompts": prompts if val_fraction <= 0 else f"{prompts} (held-out {val_fraction}, seed {split_seed})",
        "max_length": max_length,
        "overlong": overlong,
        "chat_template": chat_template,
        "batch_size": batch_size,
        "seed": evaluation.seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "stop_tokens": stop_tokens or [],
        "missing_eos_penalty": missing_eos_penalty,
        "missing_eos_mode": missing_eos_mode,
        "penalize_empty": penalize_empty,
    }
    point = overoptimization_point(summary, "policy", "baseline", "evaluate")
    curve = _recorded_overoptimization(policy, sources) + ([point] if point is not None else [])
    return _write(output, summary, records, sources, evaluation.num_samples, curve)


def _recorded_overoptimization(policy: str, sources: dict) -> list[dict]:
    """The over-optimisation points a PPO run recorded at its evaluations (its ``final/evaluation.json``), when
    they were measured as this evaluation is: the same settings, and the run's reference as the baseline."""
    path = Path(policy) / JSON_FILE
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    settings = {k: v for k, v in recorded.get("settings", {}).items() if k != "prompts"}
    differ = sorted(k for k, v in settings.items() if k in sources and sources[k] != v)
    folder = RunFolder(policy)
    reference = folder.info.extra.get("reference") if folder.stage == "ppo" else None
    same_reference = reference is not None and Path(reference).resolve() == Path(sources["reference"]).resolve()
    if differ or not same_reference:
        why = f"settings {differ} differ" if differ else f"the run's reference is {reference}"
        log.warning(f"evaluate: the PPO run's own over-optimisation points are left out ({why})")
        return []
    return list(recorded.get("overoptimization", []))


def _write(output: str, summary: dict, records: list[dict], sources: dict, num_samples: int, curve: list[dict]) -> dict:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    result = {"sources": sources, "summary": summary, "overoptimization": curve, "records": records}
    (out / JSON_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    report = report_markdown(summary, records, "policy", "baseline", sources, num_samples, curve)
    (out / MARKDOWN_FILE).write_text(report)
    print(markdown_table(["metric", "value"], [(k, f"{v:.4f}") for k, v in summary.items()], numbered=False))
    print(f"-> {out / JSON_FILE}, {out / MARKDOWN_FILE}")
    return result
