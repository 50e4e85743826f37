"""Comparing two policies on the same prompts: reward-model score, win rate, KL to a reference, response
length, the "gold" score of a known preference when there is one, and the texts side by side.

One definition serves the PPO stage's own evaluation and the ``rlhf-lightning evaluate`` command, so the two
give identical numbers for the same prompts, seed and batch size:

- each side's score is the reward model's raw score (no clipping or whitening, which would rescale each
  side by its own statistics); the win rate compares raw scores, ties counting half;
- the missing-EOS penalty PPO would apply to a response that never ended (or was empty) is its own column,
  ``{side}_eos_penalty`` (0 for a response that ended), not part of the score; ``{side}_empty`` marks an
  empty answer (a stop token first);
- the KL of a side to the reference is measured at the temperature its responses were sampled at (1 for
  greedy responses);
- batch ``i`` samples from a generator seeded with ``seed + i``, reseeded for each side: both sides draw the
  same random numbers (common random numbers: a lower-variance comparison), and the reference's answers are
  the same at every evaluation of a run, a fixed baseline for the over-optimisation curve.

The PPO stage evaluates its policy against the SFT reference with :func:`compare_batch`; the
``rlhf-lightning evaluate`` command (:func:`evaluate_policies`) compares any two policies, each a run's
``final`` folder (an adapter on a base model) or a Hugging Face model folder:

    rlhf-lightning evaluate --policy runs/quickstart/ppo/final --baseline runs/quickstart/sft/final \\
        --reward_model runs/quickstart/reward/final --prompts builtin:prompts.jsonl --val_fraction 0.1 \\
        --output runs/quickstart/evaluation

It writes ``evaluation.json`` (summary and every record) and ``evaluation.md`` (summary and samples).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from rlhf_lightning.callbacks import markdown_table
from rlhf_lightning.data.chat import ChatTemplateMode, stop_token_ids, text_rows_as_chat
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.models.adapters import Role, role_scores, sample_from_role, sequence_kl
from rlhf_lightning.models.config import DType, ModelConfig, Quantization
from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.generation import GenerationConfig, generation_eos_ids, left_pad, seeded
from rlhf_lightning.models.loading import (
    RUN_INFO_FILE,
    load_causal_lm,
    load_tokenizer,
    read_run_info,
    recorded_chat_template,
)
from rlhf_lightning.models.reward import hidden_size_of, load_head
from rlhf_lightning.ops import empty_responses, penalize_unfinished
from rlhf_lightning.scores import ScoreFunction, require_finite

log = logging.getLogger(__name__)

JSON_FILE, MARKDOWN_FILE = "evaluation.json", "evaluation.md"

Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(prompts, prompt_mask) -> (sequences, attention_mask, response_mask, ended)``."""


def win(a: float, b: float) -> float:
    """1 if ``a`` beats ``b``, 0.5 for a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def kl_temperature(temperature: float) -> float:
    """The temperature KL is measured at for responses sampled at ``temperature`` (1 for greedy ones)."""
    return temperature if temperature > 0 else 1.0


def eos_penalty(
    scores: torch.Tensor,
    ended: torch.Tensor,
    penalty: float | None,
    mode: Literal["subtract", "replace"],
    empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(b,)`` the change PPO's missing-EOS penalty makes to each raw score: ``-penalty`` (``subtract``) or
    ``-penalty - score`` (``replace``) for a response that never ended, and for an empty one (nothing before
    its stop token) where ``empty`` ``(b,)`` is given; 0 for the others or when the penalty is off."""
    if penalty is None:
        return torch.zeros_like(scores)
    finished = ended if empty is None else ended & ~empty
    return penalize_unfinished(scores, finished, -penalty if mode == "replace" else penalty, mode) - scores


@torch.no_grad()
def compare_batch(
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    samplers: dict[str, Sampler],
    score: Callable[[torch.Tensor, torch.Tensor, int, list[str]], torch.Tensor],
    tokenizer,
    kl: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    kl_sides: Sequence[str] = (),
    gold_fn: ScoreFunction | None = None,
    penalty: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prompt_texts: Sequence[str] | None = None,
    seed: int | None = None,
) -> list[dict]:
    """One record per prompt with each side's response, raw score, missing-EOS penalty, length, whether it
    ended, and for the sides in ``kl_sides`` the summed KL of its response to the reference; ``gold_fn``
    adds ``{side}_gold``.

    ``score(sequences, attention_mask, prompt_length, prompt_texts)`` gives the raw scores ``(b,)``;
    ``penalty(scores, ended, empty)`` the missing-EOS penalty ``(b,)`` (see :func:`eos_penalty`);
    ``kl(side, sequences, attention_mask, response_mask)`` the KL ``(b,)`` of that side's responses.
    ``prompt_texts`` are the prompts as the user wrote them (a text prompt's text, a conversation's last user
    message); by default the prompt tokens are decoded. The records show them, and ``score`` (for a reward
    function) and ``gold_fn`` get them, as a PPO reward function does. With ``seed``, each side samples from a
    generator seeded with it (the global RNG is left as it was), so every side draws the same random numbers.
    """
    p = prompts.shape[1]
    decode = tokenizer.decode
    if prompt_texts is None:
        prompt_texts = [decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(prompts, prompt_mask)]
    texts = list(prompt_texts)
    records = [{"prompt": text} for text in texts]
    for side, sample in samplers.items():
        with seeded(seed, prompts.device) if seed is not None else contextlib.nullcontext():
            sequences, attention_mask, mask, ended = sample(prompts, prompt_mask)
        scores = score(sequences, attention_mask, p, texts)
        empty = empty_responses(mask, ended)
        penalties = penalty(scores, ended, empty) if penalty is not None else torch.zeros_like(scores)
        kls = kl(side, sequences, attention_mask, mask) if kl is not None and side in kl_sides else None
        for i, record in enumerate(records):
            record[side] = decode(sequences[i, p:][mask[i]], skip_special_tokens=True)
            record[f"{side}_score"] = scores[i].item()
            record[f"{side}_eos_penalty"] = penalties[i].item()
            if kls is not None:
                record[f"{side}_kl"] = kls[i].item()
            record[f"{side}_length"] = int(mask[i].sum())
            record[f"{side}_ended"] = bool(ended[i])
            record[f"{side}_empty"] = bool(empty[i])
    if gold_fn is not None:
        for side in samplers:
            gold = gold_fn(texts, [r[side] for r in records])
            for record, g in zip(records, gold.tolist()):
                record[f"{side}_gold"] = g
    return records


def summarize(records: list[dict], a: str, b: str) -> dict[str, float]:
    """Means over the records; ``win_rate`` is ``a`` over ``b`` by score (ties count half), and
    ``gold_win_rate`` the same by the gold score."""
    summary = {
        f"{a}_score": _mean(r[f"{a}_score"] for r in records),
        f"{b}_score": _mean(r[f"{b}_score"] for r in records),
        "win_rate": _mean(win(r[f"{a}_score"], r[f"{b}_score"]) for r in records),
    }
    for side in (a, b):
        if records and f"{side}_kl" in records[0]:
            summary[f"{side}_kl"] = _mean(r[f"{side}_kl"] for r in records)
    for side in (a, b):
        summary[f"{side}_length"] = _mean(r[f"{side}_length"] for r in records)
        summary[f"{side}_ended"] = _mean(r[f"{side}_ended"] for r in records)
        summary[f"{side}_empty"] = _mean(r.get(f"{side}_empty", False) for r in records)
        summary[f"{side}_eos_penalty"] = _mean(r[f"{side}_eos_penalty"] for r in records)
    if records and f"{a}_gold" in records[0]:
        summary[f"gold_{a}"] = _mean(r[f"{a}_gold"] for r in records)
        summary[f"gold_{b}"] = _mean(r[f"{b}_gold"] for r in records)
        summary["gold_win_rate"] = _mean(win(r[f"{a}_gold"], r[f"{b}_gold"]) for r in records)
    return summary


def short_prompt(text: str, keep: int = 200) -> str:
    """A prompt for a table cell: whitespace runs as one space, and only its end when it is long (the
    request comes last)."""
    plain = " ".join(text.split())
    return plain if len(plain) <= keep else "…" + plain[-keep:]


def samples_table(records: list[dict], a: str, b: str, limit: int | None = None) -> str:
    """Markdown table: the prompt (the user's last message), then each side's response and raw score (and KL
    when measured)."""
    header = ["prompt", a, f"{a} score"]
    has_kl = bool(records) and f"{a}_kl" in records[0]
    if has_kl:
        header.append(f"{a} KL")
    header += [b, f"{b} score"]
    rows = []
    for r in records[:limit]:
        kl = [r[f"{a}_kl"]] if has_kl else []
        rows.append([short_prompt(r["prompt"]), r[a], r[f"{a}_score"], *kl, r[b], r[f"{b}_score"]])
    return markdown_table(header, rows)


def overoptimization_point(summary: dict[str, float], a: str, b: str, at: int | str) -> dict | None:
    """One point of the over-optimisation curve from a :func:`summarize` summary: ``at`` (an iteration, or a
    label), side ``a``'s mean KL to the reference (nats), its mean reward-model ``score`` and side ``b``'s
    (``baseline_score``; in PPO the baseline is the reference), and with a gold function both gold scores
    (``gold``, ``baseline_gold``); ``None`` when ``a``'s KL was not measured.

    Plotted against KL, the reward-model score keeps rising while the gold score rises, peaks and falls: the
    gap is how far the policy exploits the reward model's errors (Gao et al. 2022, "Scaling Laws for Reward
    Model Overoptimization", who plot against ``sqrt(KL)``)."""
    if f"{a}_kl" not in summary:
        return None
    point = {"at": at, "kl": summary[f"{a}_kl"], "score": summary[f"{a}_score"]}
    point["baseline_score"] = summary[f"{b}_score"]
    if f"gold_{a}" in summary:
        point |= {"gold": summary[f"gold_{a}"], "baseline_gold": summary[f"gold_{b}"]}
    return point


def overoptimization_table(points: list[dict]) -> str:
    """Markdown: one row per point of :func:`overoptimization_point`, in KL order (gold cells ``n/a`` for a
    point measured without a gold function)."""
    gold = any("gold" in p for p in points)
    headers = ["at", "KL (nats)", "sqrt KL", "reward model: policy", "reward model: baseline"]
    headers += ["gold: policy", "gold: baseline"] if gold else []
    rows = []
    for p in sorted(points, key=lambda p: p["kl"]):
        row = [str(p["at"]), p["kl"], max(p["kl"], 0.0) ** 0.5, p["score"], p["baseline_score"]]
        rows.append(tuple(row + ([p.get("gold", "n/a"), p.get("baseline_gold", "n/a")] if gold else [])))
    return markdown_table(headers, rows, numbered=False)


def report_markdown(
    summary: dict[str, float],
    records: list[dict],
    a: str,
    b: str,
    sources: dict,
    limit: int,
    overoptimization: list[dict] | None = None,
) -> str:
    lines = [f"# {a} vs {b}", ""]
    lines += [f"- {name}: `{value}`" for name, value in sources.items()]
    metrics = markdown_table(["metric", "value"], [(k, f"{v:.4f}") for k, v in summary.items()], numbered=False)
    lines += ["", metrics, ""]
    if overoptimization:
        lines += [
            "## Reward-model score and gold score against KL",
            "",
            "Each evaluation of the policy: where the reward-model score keeps rising while the gold score stops, "
            "the policy is exploiting the reward model (over-optimisation).",
            "",
            overoptimization_table(overoptimization),
            "",
        ]
    table = samples_table(records, a, b, limit)
    lines += [f"## Samples ({min(limit, len(records))} of {len(records)})", "", table, ""]
    return "\n".join(lines)


# --- loading policies and a reward model from folders ---------------------------------------------------------
def _describe_folder(path: str) -> dict:
    """``{"base": ..., "adapter": folder or None, "stage": ...}`` for a run folder; a model folder or hub id
    (or ``embedded``) is a full model."""
    if (Path(path) / RUN_INFO_FILE).exists():
        info = read_run_info(path)
        if info.get("adapter"):
            return {"base": info["base_model"], "adapter": path, "stage": info.get("stage")}
        return {"base": path, "adapter": None, "stage": info.get("stage")}
    return {"base": path, "adapter": None, "stage": None}


class RoleLoader:
    """Loads policies and reward models as :class:`Role` s; adapters on the same base share one copy of it."""

    def __init__(self, model_config: ModelConfig, device: torch.device | str) -> None:
        self.model_config, self.device = model_config, device
        self._bases: dict[str, torch.nn.Module] = {}

    def _base(self, name_or_path: str, shared: bool) -> torch.nn.Module:
        key = resolve_model_path(name_or_path)
        if shared and key in self._bases:
            return self._bases[key]
        cfg = ModelConfig(**{**vars(self.model_config), "name_or_path": name_or_path, "adapter": None})
        model = load_causal_lm(cfg, lora=None, device=self.device, trainable=False).to(self.device).eval()
        if shared:
            self._bases[key] = model
        return model

    def load(self, path: str, name: str) -> Role:
        """A policy (``head`` None) or, for a reward run's folder, a reward model (with its score head)."""
        what = _describe_folder(path)
        if what["adapter"] is None:
            model = self._base(what["base"], shared=False)
            role = Role(model, None)
        else:
            from peft import PeftModel

            base = self._base(what["base"], shared=True)
            key = resolve_model_path(what["base"])
            if isinstance(base, PeftModel):
                base.load_adapter(what["adapter"], adapter_name=name, is_trainable=False)
            else:
                base = PeftModel.from_pretrained(base, what["adapter"], adapter_name=name, is_trainable=False)
                self._bases[key] = base
            base.eval()
            role = Role(base, name)
        if what["stage"] == "reward":
            role.head = load_head(path, hidden_size_of(role.model)).to(self.device).eval()
        return role


def _tokenizer_of(path: str):
    return load_tokenizer(path if (Path(path) / "tokenizer_config.json").exists() else _describe_folder(path)["base"])


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
) -> list:
    """Prompt examples (token ids and the text tables show) from a prompts file (PPO's format); with
    ``val_fraction`` only the held-out split that a PPO run with the same file, fraction and seed kept for
    evaluation."""
    from rlhf_lightning.data.prompts import PromptsDataModule

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
    examples = data.val_examples if val_fraction > 0 else data.train_examples
    return examples[:max_prompts]


def evaluate_policies(
    policy: str,
    baseline: str,
    reward_model: str,
    output: str,
    prompts: str | list[str] = "builtin:prompts.jsonl",
    reference: str | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    max_prompts: int | None = None,
    max_length: int = 256,
    overlong: Literal["truncate", "drop"] = "drop",
    chat_template: ChatTemplateMode | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    stop_tokens: list[str] | None = None,
    missing_eos_penalty: float | None = 1.0,
    missing_eos_mode: Literal["subtract", "replace"] = "subtract",
    penalize_empty: bool = True,
    batch_size: int = 16,
    gold_function: str | None = None,
    num_samples: int = 8,
    seed: int = 0,
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
        val_fraction: When > 0, use only the held-out split a PPO run with the same ``prompts``,
            ``val_fraction``, ``split_seed``, ``max_length`` and ``overlong`` evaluated on; 0 uses every prompt.
        split_seed: Seed of that split (the prompts DataModule's ``split_seed``).
        max_prompts: Evaluate at most this many prompts.
        max_length: Longest prompt in tokens.
        overlong: What happens to a longer prompt, as in the prompts DataModule: ``drop`` or ``truncate``.
        chat_template: How text prompts are formatted, as the prompts DataModule's option (``auto``,
            ``always``, ``never``); default: as the policy's run formatted them (``auto`` for a model folder).
        max_new_tokens: Longest response.
        temperature: Sampling temperature of both policies (0 = greedy); KL is measured at the same one.
        stop_tokens: More tokens that end a response, as PPO's ``rollout.stop_tokens``.
        missing_eos_penalty: PPO's ``rewards.missing_eos_penalty``, reported per side as ``*_eos_penalty``.
        missing_eos_mode: PPO's ``rewards.missing_eos_mode``.
        penalize_empty: PPO's ``rewards.penalize_empty``: an empty response gets the missing-EOS penalty too.
        batch_size: Prompts per generation batch.
        gold_function: ``module:function`` giving the true preference, ``f(prompts, responses) -> scores``.
        num_samples: Rows of the sample table in evaluation.md.
        seed: Seed of the sampling: batch ``i`` draws from ``seed + i``.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        dtype: Weight dtype of the base models.
        quantization: Load the base models 4-bit / 8-bit to save memory.
    """
    if _describe_folder(reward_model)["stage"] != "reward":
        raise ValueError(f"{reward_model} is not a reward model folder (the final folder of a reward run)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Everything the user named is checked before any weight is loaded: folders, vocabularies, prompts.
    tokenizer = _tokenizer_of(policy)
    others = {"baseline": baseline, "reward model": reward_model, "reference": reference or baseline}
    _check_same_vocabulary(tokenizer, others)
    if batch_size < 1:
        raise OptionError(f"--batch_size must be >= 1, got {batch_size}")
    stop_token_ids(tokenizer, (), stop_tokens or [], "--stop_tokens")  # refused before any weight is loaded
    gold_fn = ScoreFunction(gold_function, "gold_function") if gold_function else None
    chat_template = chat_template or recorded_chat_template(policy)
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
        return sequence_kl(sides[side], ref_role, sequences, attention_mask, mask, kl_temperature(temperature))

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
            compare_batch(ids, mask, samplers, score, tokenizer, kl, kl_sides, gold_fn, penalty, texts, seed + i)
        )
        log.info(f"evaluate: {len(records)}/{len(examples)} prompts")
    summary = summarize(records, "policy", "baseline")
    sources = {
        "policy": policy,
        "baseline": baseline,
        "reward_model": reward_model,
        "reference": reference or baseline,
        "prompts": prompts if val_fraction <= 0 else f"{prompts} (held-out {val_fraction}, seed {split_seed})",
        "max_length": max_length,
        "overlong": overlong,
        "chat_template": chat_template,
        "batch_size": batch_size,
        "seed": seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "stop_tokens": stop_tokens or [],
        "missing_eos_penalty": missing_eos_penalty,
        "missing_eos_mode": missing_eos_mode,
        "penalize_empty": penalize_empty,
    }
    point = overoptimization_point(summary, "policy", "baseline", "evaluate")
    curve = _recorded_overoptimization(policy, sources) + ([point] if point is not None else [])
    return _write(output, summary, records, sources, num_samples, curve)


def _recorded_overoptimization(policy: str, sources: dict) -> list[dict]:
    """The over-optimisation points a PPO run recorded at its evaluations (its ``final/evaluation.json``), when
    they were measured as this evaluation is: the same settings, and the run's reference as the baseline."""
    path = Path(policy) / JSON_FILE
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    settings = {k: v for k, v in recorded.get("settings", {}).items() if k != "prompts"}
    differ = sorted(k for k, v in settings.items() if k in sources and sources[k] != v)
    reference = read_run_info(policy).get("reference") if _describe_folder(policy)["stage"] == "ppo" else None
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
