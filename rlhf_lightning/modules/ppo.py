"""Stage 3: PPO against the reward model, with a per-token KL penalty towards the SFT reference.

One training batch of prompts is one PPO iteration:

1. rollout: the policy samples a response to each prompt (KV cache, eval mode, full distribution);
2. scoring, without gradients: a fresh forward pass gives the policy's log-probs (at ``logits / T``) and
   entropies; the reference gives its log-probs, the value model its values, the reward model (or a reward
   function) the score at the last real token; responses that never ended are penalised;
3. rewards: ``-beta * KL`` on every response token plus the score on the last one; GAE; whitened advantages;
4. training: ``ppo_epochs`` passes over shuffled minibatches, clipped policy loss and clipped value loss,
   one optimizer step per minibatch (Lightning manual optimization).

Policy, reference, value and reward share one (optionally 4-bit) base model as named LoRA adapters; see
:mod:`rlhf_lightning.models.adapters`. ``trainer.global_step`` counts optimizer steps
(``ppo_epochs * num_minibatches`` per iteration); TensorBoard's x-axis counts iterations.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from rlhf_lightning.callbacks import PhaseTimer, markdown_table
from rlhf_lightning.data.chat import stop_token_ids
from rlhf_lightning.evaluation import (
    compare_batch,
    eos_penalty,
    kl_temperature,
    overoptimization_point,
    overoptimization_table,
    samples_table,
    short_prompt,
    summarize,
)
from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
from rlhf_lightning.models.adapters import (
    Role,
    response_logprobs,
    response_values,
    role_hidden_states,
    role_logprobs,
    role_scores,
    sample_from_role,
    sequence_kl,
    use_adapter,
)
from rlhf_lightning.models.embedded import resolve_model_path
from rlhf_lightning.models.generation import generation_eos_ids, seeded
from rlhf_lightning.models.loading import disable_dropout, load_causal_lm, read_run_info, recorded_chat_template
from rlhf_lightning.models.reward import RewardModel, ScalarHead, hidden_size_of, load_head, save_head
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.optim import OptimConfig, build_optimizer, build_scheduler
from rlhf_lightning.ops import (
    AdaptiveKLController,
    FixedKLController,
    content_mask,
    distinct_n,
    empty_fraction,
    empty_responses,
    gae,
    kl_per_token,
    masked_mean,
    pearson,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
    whiten,
)
from rlhf_lightning.runs import HELDOUT_FILE
from rlhf_lightning.scores import ScoreFunction, require_finite

POLICY, REFERENCE, REWARD, VALUE = "default", "reference", "reward", "value"
SIDES = ("policy", "reference")  # the evaluation compares the policy with the reference

# A PPO checkpoint is taken between iterations and must hold the state after the iteration's updates (with
# the RNG and data position of the next one); Lightning's advice to save a pre-optimization copy does not
# apply.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")
EVALUATION_FILE = "evaluation.json"


@dataclass
class PPOConfig:
    """The PPO update."""

    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    num_minibatches: int = 1
    """Optimizer steps per pass: the rollout batch is reshuffled and split into this many minibatches."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward pass (gradients accumulate within a minibatch); bounds memory. Also
    used for the scoring forward passes. ``null``: a whole minibatch at once."""
    clip_eps: float = 0.2
    """Policy ratio clipping ``[1 - eps, 1 + eps]``."""
    value_clip: float = 0.2
    """Values are clipped to within this distance of the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = off)."""
    gamma: float = 1.0
    """Discount over response tokens."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages over the valid tokens of the batch (all ranks)."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm before each optimizer step, the policy's and the value function's separately
    (``null``: off). Use this, not ``trainer.gradient_clip_val``, which Lightning refuses under manual
    optimization."""


@dataclass
class RewardShaping:
    """How the reward model's score and the KL penalty become per-token rewards."""

    kl_coef: float = 0.05
    """``beta``: weight of the per-token KL penalty ``-beta * kl_t`` (initial value if adaptive)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """``k1 = log p - log q`` or ``k3 = (q/p - 1) - log(q/p)`` (always >= 0, lower variance)."""
    adaptive_kl: bool = False
    """Adapt ``beta`` so that the KL tracks ``kl_target`` (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (responses) of the adaptive controller."""
    missing_eos_penalty: float | None = 1.0
    """Penalty for a response that did not end (no EOS within ``max_new_tokens``); ``null`` disables it."""
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    """``subtract`` the penalty from the score, or ``replace`` the score with ``-missing_eos_penalty``."""
    penalize_empty: bool = True
    """An empty response (a stop token first) gets the missing-EOS penalty too: a reward model rarely saw an
    empty answer, and may score it above real ones. Sampling is left alone (no forced minimum length, which
    would bias the KL); ``false`` scores empty answers as the reward model does."""
    score_clip: float | None = None
    """Clip scores to ``[-score_clip, score_clip]`` (``null``: off)."""
    whiten_scores: bool = False
    """Divide the scores of each batch by their standard deviation (mean kept)."""


@dataclass
class EvalConfig:
    """Evaluation on the held-out prompts: the policy against the reference, both judged by the reward."""

    at_end: bool = True
    """Evaluate at the end of training; results go to TensorBoard (``eval/*``) and ``evaluation.json``.
    ``rlhf-lightning validate`` (and ``trainer.val_check_interval``) run the same evaluation on demand."""
    temperature: float | None = None
    """Sampling temperature of evaluation responses (and of the sample table); ``null`` uses the rollout's.
    Their KL is measured at this temperature too."""
    seed: int = 0
    """Seed of the evaluation's and the sample table's own random generator (batch ``i`` of the evaluation
    draws from ``seed + i``); they never touch the training run's random state."""
    samples_every_n_iterations: int = 10
    """Every N iterations log a table of eval prompts with the policy's response, score and KL (0 = off)."""
    num_samples: int = 4
    """Rows of that table, and of the evaluation's side-by-side table."""
    gold_function: str | None = None
    """Optional ``module:function`` computing a known "true" preference, ``f(prompts, responses) -> scores``
    (texts without special tokens, prompts as the reward function gets them); evaluation then also reports the
    gold score and gold win rate."""


class Experience(NamedTuple):
    """One rollout batch, everything ``(b, r)`` over response tokens unless noted."""

    sequences: torch.Tensor  # (b, p + r) prompt and response ids
    attention_mask: torch.Tensor  # (b, p + r)
    mask: torch.Tensor  # response tokens through the first EOS
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOModule(CausalLMModule):
    """PPO on one base model with named adapters: policy (trained, from the SFT adapter), reference (the
    SFT adapter, frozen), reward (adapter + score head, frozen) and value (from the reward adapter and head,
    trained).

    Logged per iteration (TRL's names): ``objective/kl``, ``objective/entropy``, ``objective/non_score_reward``,
    ``objective/rlhf_reward``, ``objective/scores``, ``objective/kl_coef``, ``policy/approxkl_avg``,
    ``policy/clipfrac_avg``, ``policy/entropy_avg``, ``loss/policy_avg``, ``loss/value_avg``,
    ``val/clipfrac_avg``, ``val/ratio``, ``val/num_eos_tokens``, ``rollout/response_length``, ``lr``, and
    ``perf/{rollout,scoring,training}_sec``, ``perf/*_tokens_per_sec`` and ``perf/peak_memory_gb_*`` per phase.

    Args:
        model: The policy's base model and, in ``adapter``, the SFT run's ``final`` folder: the policy starts
            from it and the reference is it. Without an adapter the policy gets fresh LoRA weights and the
            reference is the base model alone.
        lora: LoRA settings for fresh adapters (the policy without SFT adapter; the value without reward
            adapter).
        optim: Optimizer and schedule (one step per minibatch).
        reward_model: The reward run's ``final`` folder (adapter + ``score_head.safetensors``).
        reward_function: Instead of a reward model, ``module:function`` with
            ``f(prompts: list[str], responses: list[str]) -> list[float]`` (rule-based rewards); the prompts as
            the user wrote them (a text prompt's text, a conversation's last user message).
        separate_reward: Load the reward model as its own model instead of an adapter on the policy's base
            (more memory; needed when it was trained on another base or in full).
        separate_value: Give the value function its own copy of the reward model's base (more memory).
        rollout: Sampling of the responses (keep ``top_k: 0`` and ``top_p: 1.0``: truncated sampling makes
            the measured KL negative).
        ppo: Epochs, minibatches, clipping, GAE.
        rewards: KL penalty, missing-EOS penalty, score clipping.
        evaluation: Held-out evaluation and the sample table.
        logprob_chunk_size: Positions per chunk when applying the LM head.
    """

    stage = "ppo"

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),  # noqa: B008 - dataclass defaults show every field in --help
        lora: LoraConfig = LoraConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(lr=5e-5, warmup_ratio=0.0, schedule="linear"),  # noqa: B008
        reward_model: str | None = None,
        reward_function: str | None = None,
        separate_reward: bool = False,
        separate_value: bool = False,
        rollout: GenerationConfig = GenerationConfig(max_new_tokens=64),  # noqa: B008
        ppo: PPOConfig = PPOConfig(),  # noqa: B008
        rewards: RewardShaping = RewardShaping(),  # noqa: B008
        evaluation: EvalConfig = EvalConfig(),  # noqa: B008
        logprob_chunk_size: int = 1024,
    ) -> None:
        if (reward_model is None) == (reward_function is None):
            raise ValueError("give exactly one of reward_model (a reward run's final folder) and reward_function")
        if separate_value and reward_model is None:
            raise ValueError("separate_value needs a reward_model to start the value function from")
        if not lora.enabled:
            raise ValueError("PPO trains LoRA adapters on a shared base model: lora.enabled must be true")
        if rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0: PPO needs sampled responses")
        if rollout.top_k != 0 or rollout.top_p < 1.0:
            rank_zero_warn("rollout top_k/top_p truncate the sampling distribution: the measured KL becomes biased")
        if evaluation.temperature is not None and evaluation.temperature < 0:
            raise ValueError(f"evaluation.temperature must be >= 0 (0: greedy), got {evaluation.temperature}")
        if not model.disable_dropout:
            rank_zero_warn("PPO turns every dropout off (model.disable_dropout: false is ignored)")
            model = dataclasses.replace(model, disable_dropout=True)
        super().__init__(model, lora, optim)
        self.stop_ids: list[int] = []  # set in configure_model: the model's generation config adds its EOS ids
        self.automatic_optimization = False
        self.reward_model_path = reward_model
        self.reward_function_path = reward_function
        self.separate_reward = separate_reward
        self.separate_value = separate_value
        self.rollout_config = rollout
        self.ppo = ppo
        self.shaping = rewards
        self.eval_config = evaluation
        self.logprob_chunk_size = logprob_chunk_size
        if rewards.adaptive_kl:
            self.kl_controller = AdaptiveKLController(rewards.kl_coef, rewards.kl_target, rewards.kl_horizon)
        else:
            self.kl_controller = FixedKLController(rewards.kl_coef)
        self.reward_fn = ScoreFunction(reward_function, "reward_function") if reward_function else None
        self.gold_fn = ScoreFunction(evaluation.gold_function, "gold_function") if evaluation.gold_function else None
        self.value_head: ScalarHead | None = None
        self.reward_head: ScalarHead | None = None
        self.roles: dict[str, Role] = {}
        self._eval_records: list[dict] = []
        self._grad_norms: list[dict[str, torch.Tensor]] = []
        self._groups: dict[str, list[torch.nn.Parameter]] | None = None
        self._last_warning: dict[str, int] = {}
        self._first_rollout: dict[str, float] | None = None  # the first iteration's score, length, distinct-2
        self._overoptimization: list[dict] = []  # one point per evaluation: KL, reward-model and gold scores
        self.last_stats: dict[str, float] = {}
        self.episodes = 0  # prompts rolled out so far, all ranks
        self.save_hyperparameters()

    # --- models ------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        # a bad rollout.stop_tokens entry is refused before any weight is loaded
        stop_token_ids(self.tokenizer, (), self.rollout_config.stop_tokens, "model.rollout.stop_tokens")
        device = self._target_device()
        cfg = self.model_config
        self.model = load_causal_lm(cfg, self.lora_config, device=device)  # policy: adapter "default"
        self.model.train()
        hidden = hidden_size_of(self.model)
        if cfg.adapter is not None:
            self.model.load_adapter(cfg.adapter, adapter_name=REFERENCE, is_trainable=False)
            reference = Role(self.model, REFERENCE)
        else:
            reference = Role(self.model, None)  # base alone
        reward = self._configure_reward(device, hidden)
        value = self._configure_value(device, hidden)
        self.roles = {"policy": Role(self.model, POLICY), "reference": reference, "reward": reward, "value": value}
        self._set_trainable()
        # Adapters loaded from folders bring their own lora_dropout (0.05 in many recipes); PPO's ratio is only
        # 1 on the first minibatch if no forward pass drops anything.
        disable_dropout(self)
        self.train()
        eos = generation_eos_ids(self.model)
        self.stop_ids = stop_token_ids(
            self.tokenizer, eos, self.rollout_config.stop_tokens, "model.rollout.stop_tokens"
        )
        rank_zero_info(
            "ppo: policy from "
            + (cfg.adapter or "fresh LoRA")
            + f", reference {'SFT adapter' if cfg.adapter else 'base model'}, reward "
            + (self.reward_function_path or self.reward_model_path)
            + f", value {'own model' if self.separate_value else 'adapter'}"
        )

    def _reward_info(self) -> dict:
        info = read_run_info(self.reward_model_path)
        if info.get("stage") != "reward":
            raise ValueError(f"{self.reward_model_path} holds a '{info.get('stage')}' model, not a reward model")
        return info

    def _shares_base(self, info: dict) -> bool:
        same = resolve_model_path(info["base_model"]) == resolve_model_path(self.model_config.name_or_path)
        return bool(info["adapter"]) and same

    def _configure_reward(self, device: torch.device, hidden: int) -> Role | None:
        if self.reward_fn is not None:
            return None
        info = self._reward_info()
        if not self.separate_reward and not self._shares_base(info):
            raise ValueError(
                f"the reward model {self.reward_model_path} was not trained as an adapter on "
                f"{self.model_config.name_or_path}: set separate_reward: true to load it as its own model"
            )
        if self.separate_reward:
            base = ModelConfig(**{**vars(self.model_config), "adapter": None, "gradient_checkpointing": False})
            self.reward_backbone = RewardModel.from_folder(self.reward_model_path, base, device)
            if self.reward_backbone.tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(f"the reward model {self.reward_model_path} uses another tokenizer than the policy")
            self.reward_backbone.requires_grad_(False)
            adapter = POLICY if hasattr(self.reward_backbone.model, "peft_config") else None
            return Role(self.reward_backbone.model, adapter, self.reward_backbone.head)
        self.model.load_adapter(self.reward_model_path, adapter_name=REWARD, is_trainable=False)
        self.reward_head = load_head(self.reward_model_path, hidden).to(device).requires_grad_(False)
        return Role(self.model, REWARD, self.reward_head)

    def _configure_value(self, device: torch.device, hidden: int) -> Role:
        if self.separate_value:
            info = self._reward_info()
            base = {**vars(self.model_config), "name_or_path": info["base_model"], "adapter": None}
            if info["adapter"]:
                base["adapter"] = self.reward_model_path
            else:
                base["name_or_path"] = self.reward_model_path
            self.value_backbone = load_causal_lm(ModelConfig(**base), self.lora_config, device=device)
            self.value_backbone.train()
            self.value_head = load_head(self.reward_model_path, hidden_size_of(self.value_backbone)).to(device)
            return Role(self.value_backbone, POLICY, self.value_head)
        if self.reward_model_path is not None and self._shares_base(self._reward_info()):
            self.model.load_adapter(self.reward_model_path, adapter_name=VALUE, is_trainable=True)
            self.value_head = load_head(self.reward_model_path, hidden).to(device)
        else:
            from peft import LoraConfig as PeftLoraConfig

            lora = self.lora_config
            self.model.add_adapter(
                VALUE,
                PeftLoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    use_rslora=lora.use_rslora,
                    task_type="CAUSAL_LM",
                ),
            )
            self.value_head = ScalarHead(hidden).to(device)
        return Role(self.model, VALUE, self.value_head)

    def _set_trainable(self) -> None:
        """Policy and value adapters and the value head train; everything else is frozen."""
        self.model.set_requires_grad([n for n in self.model.peft_config if n in (POLICY, VALUE)], True)
        frozen = [n for n in self.model.peft_config if n not in (POLICY, VALUE)]
        if frozen:
            self.model.set_requires_grad(frozen, False)
        self.value_head.requires_grad_(True)

    # --- forward passes ----------------------------------------------------------------------------------
    @contextmanager
    def _active(self, role: str) -> Iterator[Role]:
        r = self.roles[role]
        with use_adapter(r.model, r.adapter):
            yield r

    def _logprobs(self, role: str, sequences, attention_mask, mask, with_entropy: bool = False):
        return role_logprobs(
            self.roles[role], sequences, attention_mask, mask, self.rollout_config.temperature,
            self.logprob_chunk_size, with_entropy,
        )  # fmt: skip

    def _values(self, sequences, attention_mask, response_length: int) -> torch.Tensor:
        with self._active("value") as r:
            return response_values(r.head, role_hidden_states(r, sequences, attention_mask), response_length)

    @torch.no_grad()
    def score(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_length: int,
        prompt_texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Raw reward ``(b,)`` of ``[prompt | response]`` sequences, read at the last real token. A reward
        function gets ``prompt_texts`` (the prompts as the user wrote them: a text prompt's text, the last user
        message of a conversation) or, without them, the decoded prompt tokens."""
        if self.reward_fn is not None:
            decode = self.tokenizer.batch_decode
            prompts = (
                list(prompt_texts)
                if prompt_texts is not None
                else decode(sequences[:, :prompt_length], skip_special_tokens=True)
            )
            masked = sequences[:, prompt_length:].masked_fill(attention_mask[:, prompt_length:] == 0, 0)
            responses = [
                self.tokenizer.decode(row[: int(n)], skip_special_tokens=True)
                for row, n in zip(masked.tolist(), attention_mask[:, prompt_length:].sum(-1).tolist())
            ]
            return self.reward_fn(prompts, responses, f"at iteration {self._iteration()}", sequences.device)
        scores = role_scores(self.roles["reward"], sequences, attention_mask)
        return require_finite(scores, f"the reward model {self.reward_model_path} at iteration {self._iteration()}")

    def shape_scores(self, raw: torch.Tensor, ended: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        """Scores the policy is optimised on: clipped, optionally rescaled (with the statistics of all ranks),
        missing-EOS penalty applied (to empty responses too, with ``rewards.penalize_empty``)."""
        s = self.shaping
        scores = raw
        if s.score_clip is not None:
            scores = scores.clamp(-s.score_clip, s.score_clip)
        if s.whiten_scores:  # fewer than 2 scores over all ranks are left as they are
            scores = whiten(scores, torch.ones_like(scores, dtype=torch.bool), shift_mean=False, all_reduce=True)
        return scores + self._penalty(scores, ended, empty)

    def _penalty(self, scores: torch.Tensor, ended: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        s = self.shaping
        return eos_penalty(
            scores, ended, s.missing_eos_penalty, s.missing_eos_mode, empty if s.penalize_empty else None
        )

    def _micro_slices(self, n: int, size: int | None = None) -> list[slice]:
        size = size or self.ppo.micro_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    # --- one iteration ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts: torch.Tensor, prompt_mask: torch.Tensor, role: str = "policy", temperature=None):
        """Responses to left-padded prompts: ``(sequences, attention_mask, response_mask, ended)``; a response
        ends at the first of ``self.stop_ids`` (``ended`` is False for one that ran out of room)."""
        cfg = self.rollout_config
        if temperature is not None:
            cfg = dataclasses.replace(cfg, temperature=temperature)
        return sample_from_role(self.roles[role], prompts, prompt_mask, cfg, self.stop_ids, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def make_experience(self, sequences, attention_mask, mask, ended, prompt_length: int, prompt_texts=None):
        """Scoring phase: log-probs, reference log-probs, values, scores, rewards, advantages. ``prompt_texts``
        go to a reward function (see :meth:`score`)."""
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("lp", "ent", "ref", "values", "raw")}
        r = mask.shape[1]
        for sl in self._micro_slices(sequences.shape[0]):
            seq, att, m = sequences[sl], attention_mask[sl], mask[sl]
            out = self._logprobs("policy", seq, att, m, with_entropy=True)
            parts["lp"].append(out.logprobs)
            parts["ent"].append(out.entropy)
            parts["ref"].append(self._logprobs("reference", seq, att, m).logprobs)
            parts["values"].append(self._values(seq, att, r))
            texts = prompt_texts[sl] if prompt_texts is not None else None
            parts["raw"].append(self.score(seq, att, prompt_length, texts))
        self.train(was_training)
        lp, ent, ref, values, raw = (torch.cat(parts[k]) for k in ("lp", "ent", "ref", "values", "raw"))
        values = values * mask
        scores = self.shape_scores(raw, ended, empty_responses(mask, ended))
        kl = kl_per_token(lp, ref, self.shaping.kl_estimator) * mask
        shaped = token_rewards(scores, kl, mask, self.kl_controller.beta)
        advantages, returns = gae(shaped.rewards, values, mask, self.ppo.gamma, self.ppo.lam)
        if self.ppo.whiten_advantages:
            advantages = whiten(advantages, mask, shift_mean=True, all_reduce=True)
        experience = Experience(sequences, attention_mask, mask, lp, values, advantages, returns)
        seq_kl = ((lp - ref) * mask).sum(-1)  # k1 per sequence, the logged KL whatever the estimator
        non_score = shaped.non_score.sum(-1)
        stats = {
            # all ranks: the adaptive KL controller must see the same KL everywhere
            "objective/kl": masked_mean(seq_kl, torch.ones_like(seq_kl, dtype=torch.bool), all_reduce=True),
            "objective/entropy": (ent * mask).sum(-1).mean(),
            "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (scores + non_score).mean(),
            "objective/scores": scores.mean(),
            "objective/raw_scores": raw.mean(),
            "objective/kl_coef": torch.tensor(self.kl_controller.beta),
            "val/num_eos_tokens": ended.sum().float(),
            "rollout/ended_fraction": ended.float().mean(),
            "rollout/response_length": mask.sum(-1).float().mean(),
            "val/values_mean": masked_mean(values, mask),
        }
        stats.update(self._hacking_signals(sequences[:, prompt_length:], mask, ended, raw))
        return experience, stats

    @staticmethod
    def _hacking_signals(responses, mask, ended, raw) -> dict[str, torch.Tensor]:
        """What reward hacking changes first: lexical diversity (distinct-1/2 over the batch's answers), the
        share of empty answers, and how much of the raw score length alone explains."""
        content = content_mask(mask, ended)
        return {
            "rollout/distinct_1": distinct_n(responses, content, 1),
            "rollout/distinct_2": distinct_n(responses, content, 2),
            "rollout/empty_fraction": empty_fraction(mask, ended),
            "objective/score_length_corr": pearson(raw, content.sum(-1)).float(),
        }

    def optimize(self, exp: Experience) -> dict[str, torch.Tensor]:
        """Training phase: ``ppo_epochs`` passes of clipped policy and value updates over minibatches."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        cfg = self.ppo
        b, r = exp.mask.shape
        totals: dict[str, list[torch.Tensor]] = {}

        def record(key: str, value: torch.Tensor) -> None:
            totals.setdefault(key, []).append(value.detach())

        minibatches = max(1, min(cfg.num_minibatches, b))
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(b, device=exp.mask.device)
            for mb in range(minibatches):
                index = order[mb * b // minibatches : (mb + 1) * b // minibatches]
                tokens = exp.mask[index].sum().clamp(min=1)
                for sl in self._micro_slices(len(index)):
                    rows = index[sl]
                    seq, att, m = exp.sequences[rows], exp.attention_mask[rows], exp.mask[rows]
                    weight = m.sum() / tokens  # micro-batch losses add up to the minibatch token mean
                    with self._active("policy") as role:
                        hidden = role_hidden_states(role, seq, att)
                        out = response_logprobs(
                            role.model, hidden, seq, m, self.rollout_config.temperature,
                            self.logprob_chunk_size, with_entropy=True,
                        )  # fmt: skip
                        pg = ppo_policy_loss(out.logprobs, exp.logprobs[rows], exp.advantages[rows], m, cfg.clip_eps)
                        entropy = masked_mean(out.entropy, m)
                        self.manual_backward(weight * (pg.loss - cfg.entropy_coef * entropy))
                    with self._active("value") as role:
                        hidden = role_hidden_states(role, seq, att)
                        values = response_values(role.head, hidden, r)
                        vf, vf_clipfrac = ppo_value_loss(values, exp.values[rows], exp.returns[rows], m, cfg.value_clip)
                        self.manual_backward(weight * cfg.vf_coef * vf)
                    if epoch == 0 and mb == 0 and sl.start == 0:
                        record("policy/first_ratio", pg.ratio)
                        record("policy/first_approxkl", pg.approxkl)
                    for key, value in (
                        ("loss/policy_avg", pg.loss), ("loss/value_avg", vf), ("policy/clipfrac_avg", pg.clipfrac),
                        ("policy/approxkl_avg", pg.approxkl), ("val/ratio", pg.ratio),
                        ("val/clipfrac_avg", vf_clipfrac), ("policy/entropy_avg", entropy),
                    ):  # fmt: skip
                        record(key, value)
                optimizer.step()  # checks and clips the gradients first: on_before_optimizer_step
                while self._grad_norms:  # empty when the step was not finite
                    for key, value in self._grad_norms.pop().items():
                        record(key, value)
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
        stats = {k: torch.stack(v).mean() for k, v in totals.items()}
        stats["val/ratio_var"] = torch.stack(totals["val/ratio"]).var() if len(totals["val/ratio"]) > 1 else 0 * b
        return stats

    def _gradient_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters of the policy (its adapter, ``default``) and of the value function (its
        adapter or own model, and its head); found once, the trainable set is fixed after ``configure_model``."""
        if self._groups is None:
            self._groups = {"policy": [], "val": []}
            for name, p in self.named_parameters():
                if p.requires_grad:
                    is_policy = f".{POLICY}." in name and not name.startswith("value_backbone.")
                    self._groups["policy" if is_policy else "val"].append(p)
        return self._groups

    def clip_policy_and_value_gradients(self) -> dict[str, torch.Tensor]:
        """Clip the policy's and the value function's gradients to ``ppo.max_grad_norm`` each (value gradients
        are in reward units: under one shared norm a large reward scale would shrink every policy step).
        Returns the norms before clipping, ``policy/grad_norm`` and ``val/grad_norm``."""
        norms = {}
        for group, params in self._gradient_groups().items():
            grads = [p for p in params if p.grad is not None]
            if not grads:
                norm = torch.zeros((), device=self.device)
            elif self.ppo.max_grad_norm is None:
                norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
            else:
                norm = torch.nn.utils.clip_grad_norm_(grads, self.ppo.max_grad_norm)
            norms[f"{group}/grad_norm"] = norm.detach()
        return norms

    def on_before_optimizer_step(self, optimizer) -> None:
        """Runs inside ``optimizer.step()``, after ``16-mixed`` unscaled the gradients. A NaN/inf loss or
        gradient is never applied: the guard drops those gradients and the step (still counted, like the
        schedule) leaves every weight and its state alone; under ``16-mixed`` the gradient scaler does that.
        Finite gradients are clipped, the policy's and the value's separately."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self._step_losses = []
        elif not self.step_is_finite(optimizer):
            return
        self._grad_norms.append(self.clip_policy_and_value_gradients())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        timer = PhaseTimer(self.device)
        prompts, prompt_mask = batch["input_ids"], batch["attention_mask"]
        with timer("rollout"):
            sequences, attention_mask, mask, ended = self.sample(prompts, prompt_mask)
        with timer("scoring"):
            experience, stats = self.make_experience(
                sequences, attention_mask, mask, ended, prompts.shape[1], batch.get("prompt_text")
            )
        with timer("training"):
            stats.update(self.optimize(experience))
        self.kl_controller.update(stats["objective/kl"].item(), prompts.shape[0] * self.trainer.world_size)
        generated = mask.sum().item() * self.trainer.world_size
        trained = attention_mask.sum().item() * self.trainer.world_size * self.ppo.ppo_epochs
        for phase in ("rollout", "scoring", "training"):
            stats[f"perf/{phase}_sec"] = timer.seconds[phase]
            stats[f"perf/peak_memory_gb_{phase}"] = timer.peak_gb[phase]
        stats["perf/rollout_tokens_per_sec"] = generated / max(timer.seconds["rollout"], 1e-9)
        stats["perf/scoring_tokens_per_sec"] = trained / self.ppo.ppo_epochs / max(timer.seconds["scoring"], 1e-9)
        stats["perf/training_tokens_per_sec"] = trained / max(timer.seconds["training"], 1e-9)
        stats["lr"] = self.optimizers().param_groups[0]["lr"]
        stats["train/nonfinite_steps"] = float(self.nonfinite.total)
        self.episodes += prompts.shape[0] * self.trainer.world_size
        stats["episode"] = float(self.episodes)
        self.last_stats = {k: float(v) for k, v in stats.items()}
        # means over ranks (the KL is already global); one small all-reduce per iteration under DDP
        self.log_dict({k: float(v) for k, v in stats.items()}, batch_size=prompts.shape[0], sync_dist=True)
        self.log("objective/scores_bar", stats["objective/scores"], prog_bar=True, logger=False)
        self.log("kl", stats["objective/kl"], prog_bar=True, logger=False)
        self._health_warnings(self.last_stats)

    def _warn(self, key: str, message: str, every: int = 10) -> None:
        iteration = self._iteration()
        if iteration - self._last_warning.get(key, -every) >= every:
            self._last_warning[key] = iteration
            rank_zero_warn(message)

    def _health_warnings(self, stats: dict[str, float]) -> None:
        if stats["objective/kl"] < -0.1:
            self._warn(
                "kl",
                f"objective/kl is negative ({stats['objective/kl']:.3f}): the rollout's sampling does not match "
                "the log-prob computation (top_k/top_p, temperature, or a model that differs between generation "
                "and scoring). See docs/troubleshooting.md.",
            )
        if abs(stats["policy/first_ratio"] - 1.0) > 1e-3:
            self._warn(
                "ratio",
                f"the PPO ratio on the first minibatch is {stats['policy/first_ratio']:.4f}, not 1: training and "
                "rollout forward passes disagree (dropout, non-deterministic kernels).",
            )
        if stats["val/ratio"] > 1.0 + self.ppo.clip_eps or stats["val/ratio"] < 1.0 - self.ppo.clip_eps:
            self._warn("drift", f"val/ratio drifted to {stats['val/ratio']:.3f}: lower the learning rate")
        self._hacking_warning(stats)
        if stats["rollout/ended_fraction"] < 0.5:
            self._warn(
                "eos",
                f"only {100 * stats['rollout/ended_fraction']:.0f}% of responses ended with a stop token "
                f"{self.tokenizer.convert_ids_to_tokens(self.stop_ids)} within {self.rollout_config.max_new_tokens} "
                "tokens: raise rollout.max_new_tokens, check the SFT model, or add the model's end-of-turn token to "
                "rollout.stop_tokens (docs/troubleshooting.md#ppo-responses-stop-ending)",
            )

    def _hacking_warning(self, stats: dict[str, float]) -> None:
        """Warn when the reward-model score rose above the first iteration's while the answers collapsed: half
        the first iteration's length or distinct-2, or over 20% empty answers."""
        keys = ("objective/raw_scores", "rollout/response_length", "rollout/distinct_2")
        if self._first_rollout is None:
            self._first_rollout = {k: stats[k] for k in keys}
            return
        first = self._first_rollout
        if stats["objective/raw_scores"] <= first["objective/raw_scores"]:
            return
        collapsed = [
            f"{name} {first[key]:.2f} -> {stats[key]:.2f}"
            for name, key in (("length", "rollout/response_length"), ("distinct-2", "rollout/distinct_2"))
            if stats[key] < 0.5 * first[key]
        ]
        if stats["rollout/empty_fraction"] > 0.2:
            collapsed.append(f"{100 * stats['rollout/empty_fraction']:.0f}% empty answers")
        if collapsed:
            self._warn(
                "hacking",
                f"the reward-model score rose ({first['objective/raw_scores']:.2f} -> "
                f"{stats['objective/raw_scores']:.2f}) while the answers collapsed ({', '.join(collapsed)}): the "
                "policy may be exploiting the reward model. Read the samples table; see docs/troubleshooting.md"
                "#ppo-the-reward-rises-but-the-texts-get-worse-reward-hacking",
            )

    def _iteration(self) -> int:
        """0-based index of the current PPO iteration (the x-axis of the logged scalars)."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped if self._trainer is not None else 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.eval_config.samples_every_n_iterations
        if every > 0 and self._iteration() % every == 0 and self.trainer.is_global_zero:
            self._log_samples()

    def on_fit_start(self) -> None:
        self._record_heldout_prompts()
        self._check_chat_template()
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(
                "PPO under DDP needs --trainer.strategy=ddp_find_unused_parameters_true: each backward pass "
                "reaches only the policy's or only the value's adapter, and DDP must be told the rest is unused"
            )

    def _check_chat_template(self) -> None:
        """Warn when text prompts are formatted otherwise than the reward model's and the SFT model's text rows
        were (``data.chat_template`` against the mode their run folders record): the policy would then answer,
        and be scored on, sequences shaped unlike those the reward model learned from."""
        datamodule = getattr(self.trainer, "datamodule", None)
        examples = getattr(datamodule, "train_examples", None) or []
        if not any(isinstance((e.row or {}).get("prompt"), str) for e in examples):
            return  # only text prompts depend on the option
        mode = datamodule.chat_template
        runs = {"reward model": self.reward_model_path, "SFT adapter": self.model_config.adapter}
        for name, folder in runs.items():
            recorded = recorded_chat_template(folder) if folder and Path(folder).is_dir() else None
            if recorded is not None and recorded != mode and "never" in (recorded, mode):
                rank_zero_warn(
                    f"ppo: text prompts are formatted with data.chat_template: {mode}, but the {name} {folder} "
                    f"was trained with chat_template: {recorded}: set data.chat_template: {recorded} so the policy "
                    "answers in the format the reward model scores "
                    "(docs/data-formats.md#text-rows-on-chat-models-chat_template)"
                )

    def _record_heldout_prompts(self) -> None:
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

    # --- optimizer ----------------------------------------------------------------------------------------
    def optimizer_steps_per_iteration(self) -> int:
        return self.ppo.ppo_epochs * max(1, self.ppo.num_minibatches)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.optim_config)
        trainer = self.trainer
        per_iteration = self.optimizer_steps_per_iteration()
        limits = []
        if trainer.max_steps != -1:
            limits.append(trainer.max_steps)
        if trainer.max_epochs not in (None, -1):
            if trainer.train_dataloader is None:
                trainer.fit_loop.setup_data()
            if math.isfinite(trainer.num_training_batches):
                limits.append(int(trainer.num_training_batches) * trainer.max_epochs * per_iteration)
        if not limits:
            raise ValueError("PPO needs trainer.max_steps or trainer.max_epochs to plan its learning-rate schedule")
        scheduler = build_scheduler(optimizer, min(limits), self.optim_config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -----------------------------------------------------------------------------------------
    def _eval_temperature(self) -> float:
        t = self.eval_config.temperature
        return self.rollout_config.temperature if t is None else t

    @torch.no_grad()
    def evaluate_batch(self, batch: dict, index: int = 0) -> list[dict]:
        """Policy and reference responses to one batch of prompts, each with its raw score and missing-EOS
        penalty, and the policy's KL to the reference at the evaluation temperature; sampled from the
        evaluation's own generator (``evaluation.seed + index``). See :mod:`rlhf_lightning.evaluation` for
        the definition, shared with ``rlhf-lightning evaluate``."""
        temperature = self._eval_temperature()
        samplers = {side: functools.partial(self.sample, role=side, temperature=temperature) for side in SIDES}
        return compare_batch(
            batch["input_ids"],
            batch["attention_mask"],
            samplers,
            score=self.score,
            tokenizer=self.tokenizer,
            kl=lambda side, seq, att, mask: self._sequence_kl(seq, att, mask, kl_temperature(temperature)),
            kl_sides=["policy"],
            gold_fn=self.gold_fn,
            penalty=self._penalty,
            prompt_texts=batch.get("prompt_text"),
            seed=self.eval_config.seed + index,
        )

    @staticmethod
    def summarize(records: list[dict]) -> dict[str, float]:
        """``eval/*`` means over the evaluation records, and win rates (ties count half)."""
        return {f"eval/{k}": v for k, v in summarize(records, *SIDES).items()}

    def _evaluation_table(self, records: list[dict]) -> str:
        return samples_table(records, *SIDES, limit=self.eval_config.num_samples)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_records.extend(self.evaluate_batch(batch, batch_idx))

    def on_validation_epoch_end(self) -> None:
        records, self._eval_records = self._eval_records, []
        if not records or self.trainer.sanity_checking:  # a sanity check's few batches are no evaluation
            return
        summary = self.summarize(records)
        self.log_dict(summary, sync_dist=True)
        self._write_table("evaluation", self._evaluation_table(records))
        reduce = self.trainer.strategy.reduce
        summary = {k: float(reduce(torch.tensor(v, device=self.device), reduce_op="mean")) for k, v in summary.items()}
        # inside fit, the loop validates after an iteration's update but before counting it
        self._track_overoptimization(summary, self._iteration() + (self.trainer.state.fn == "fit"))

    def _track_overoptimization(self, summary: dict[str, float], iterations: int) -> None:
        """Add this evaluation to the curve of reward-model and gold score against KL
        (:func:`rlhf_lightning.evaluation.overoptimization_point`), labelled with the ``iterations`` done
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
        self._overoptimization = [p for p in self._overoptimization if p["at"] != point["at"]] + [point]
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_scalar"):
            return
        first = self._overoptimization[0]
        curve = [(0, first["baseline_score"], first.get("baseline_gold"))]
        for p in sorted(self._overoptimization, key=lambda p: p["kl"]):
            curve.append((max(1, round(1000 * p["kl"])), p["score"], p.get("gold")))
        for step, score, gold in curve:
            experiment.add_scalar("overoptimization/reward_model_score", score, step)
            if gold is not None:
                experiment.add_scalar("overoptimization/gold_score", gold, step)
        self._write_table("overoptimization", overoptimization_table(self._overoptimization))

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
        settings = {
            "prompts": HELDOUT_FILE if datamodule.val_examples else datamodule.train_files,
            "max_length": datamodule.max_length,
            "overlong": datamodule.overlong,
            "chat_template": datamodule.chat_template,
            "batch_size": loader.batch_size,
            "seed": self.eval_config.seed,
            "temperature": self._eval_temperature(),
            "max_new_tokens": self.rollout_config.max_new_tokens,
            "stop_tokens": self.rollout_config.stop_tokens,
            "missing_eos_penalty": self.shaping.missing_eos_penalty,
            "missing_eos_mode": self.shaping.missing_eos_mode,
            "penalize_empty": self.shaping.penalize_empty,
        }
        return {"settings": settings, "summary": self.summarize(records), "records": records}

    def _write_table(self, tag: str, markdown: str) -> None:
        logger = self.logger
        if logger is not None and hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text(tag, markdown, global_step=self._iteration())

    @torch.no_grad()
    def _log_samples(self) -> None:
        """The sample table: the policy's responses to the first eval prompts, with raw score and KL, from the
        table's own generator (the training run's random state is left as it was)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        batch = datamodule.sample_batch(self.eval_config.num_samples) if hasattr(datamodule, "sample_batch") else None
        if batch is None:
            return
        ids, prompt_mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        temperature = self._eval_temperature()
        with seeded(self.eval_config.seed + self._iteration(), self.device):
            sequences, attention_mask, mask, ended = self.sample(ids, prompt_mask, "policy", temperature)
        scores = self.score(sequences, attention_mask, ids.shape[1], batch["prompt_text"])
        kl = self._sequence_kl(sequences, attention_mask, mask, kl_temperature(temperature))
        decode = self.tokenizer.decode
        rows = [
            (short_prompt(text), decode(sequences[i, ids.shape[1] :][mask[i]], skip_special_tokens=True),
             scores[i].item(), kl[i].item())
            for i, text in enumerate(batch["prompt_text"])
        ]  # fmt: skip
        self._write_table("samples", markdown_table(["prompt", "response", "score", "KL"], rows))

    def _sequence_kl(self, sequences, attention_mask, mask, temperature: float) -> torch.Tensor:
        return sequence_kl(
            self.roles["policy"], self.roles["reference"], sequences, attention_mask, mask,
            temperature, self.logprob_chunk_size,
        )  # fmt: skip

    # --- checkpoints and final output ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo"] = {
            "kl_controller": self.kl_controller.state_dict(),
            "episodes": self.episodes,
            "first_rollout": self._first_rollout,
            "overoptimization": self._overoptimization,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ppo" in checkpoint:
            self.kl_controller.load_state_dict(checkpoint["ppo"]["kl_controller"])
            self.episodes = checkpoint["ppo"]["episodes"]
            self._first_rollout = checkpoint["ppo"].get("first_rollout")
            self._overoptimization = checkpoint["ppo"].get("overoptimization", [])

    def on_train_end(self) -> None:
        evaluation = None
        if self.eval_config.at_end:
            self.eval()
            evaluation = self.evaluate()
            self.train()
            if self.logger is not None:
                self.logger.log_metrics(evaluation["summary"], step=self._iteration())
            self._track_overoptimization(evaluation["summary"], self._iteration())
            evaluation["overoptimization"] = self._overoptimization
            self._write_table("evaluation", self._evaluation_table(evaluation["records"]))
            rank_zero_info("ppo evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation["summary"].items()))
        folder = self.final_folder()  # on every rank: trainer.log_dir is a collective call under DDP
        if self.trainer.is_global_zero:
            self.save_final(folder)
            if evaluation is not None:
                (folder / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
            rank_zero_info(f"ppo: final policy adapter saved to {folder}")

    def save_final(self, folder: Path | None = None) -> Path:
        """The policy adapter at the top of ``final`` (peft format, loadable like an SFT adapter); the value
        adapter and head in ``final/value``."""
        folder = Path(folder) if folder is not None else self.final_folder()
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, selected_adapters=[POLICY])
        value_folder = folder / "value"
        if self.separate_value:
            self.value_backbone.save_pretrained(value_folder)
        elif VALUE in self.model.peft_config:
            self.model.save_pretrained(folder, selected_adapters=[VALUE])  # peft writes it to folder/value
        save_head(self.value_head, value_folder)
        self.tokenizer.save_pretrained(folder)
        from rlhf_lightning.models.loading import write_run_info

        write_run_info(
            folder,
            {
                "stage": self.stage,
                "base_model": self.model_config.name_or_path,
                "base_model_path": resolve_model_path(self.model_config.name_or_path),
                "adapter": True,
                "global_step": self.trainer.global_step if self._trainer is not None else 0,
                "reference": self.model_config.adapter,
                "reward_model": self.reward_model_path or self.reward_function_path,
                "kl_coef": self.kl_controller.beta,
                "chat_template": self.data_chat_template(),
            },
        )
        return folder


__all__ = ["EvalConfig", "PPOConfig", "PPOModule", "RewardShaping"]
