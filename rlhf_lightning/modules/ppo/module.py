"""Stage 3: PPO against the reward model, with a per-token KL penalty towards the SFT reference.

One training batch of prompts is one PPO iteration, five steps (:meth:`PPOModule.training_step`):

1. rollout: the policy samples a response to each prompt (KV cache, eval mode, full distribution);
2. experience, without gradients: the reference's log-probs, the values and the score at the last real token
   (one role after another); the policy's log-probs (at ``logits / T``) and entropies, from a pass of their
   own or, when the rollout batch is one minibatch and one micro-batch, from the update's first pass;
   rewards ``-beta * KL`` on every token plus the shaped score on the last; GAE; whitened advantages
   (:mod:`~rlhf_lightning.modules.ppo.rollout`);
3. update: ``ppo_epochs`` passes over shuffled minibatches, clipped policy and value losses, one optimizer
   step per minibatch, Lightning manual optimization (:mod:`~rlhf_lightning.modules.ppo.update`);
4. the KL coefficient adapts (with ``rewards.adaptive_kl``);
5. the iteration's statistics are logged; the health check reads them (:mod:`rlhf_lightning.callbacks`).

Policy, reference, value and reward share one (optionally 4-bit) base model as named LoRA adapters
(:mod:`~rlhf_lightning.modules.ppo.roles`). ``trainer.global_step`` counts optimizer steps
(``ppo_epochs * num_minibatches`` per iteration); TensorBoard's x-axis counts iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from rlhf_lightning.callbacks import PhaseTimer, PPOHealthCheck
from rlhf_lightning.data.chat import stop_token_ids
from rlhf_lightning.data.readers import shipped_default_warning
from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
from rlhf_lightning.models.generation import generation_eos_ids
from rlhf_lightning.models.run_folder import EVALUATION_FILE, RunInfo
from rlhf_lightning.models.score_function import ScoreFunction
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.optim import OptimConfig
from rlhf_lightning.modules.ppo.config import PPOConfig, PPOEvalConfig, RewardShaping, check_options, check_strategy
from rlhf_lightning.modules.ppo.evaluation import PPOEvaluation
from rlhf_lightning.modules.ppo.optimization import PPOOptimization
from rlhf_lightning.modules.ppo.roles import build_roles, chat_template_mismatches, save_trained_roles
from rlhf_lightning.modules.ppo.rollout import (
    FrozenPasses,
    RewardScorer,
    Rollout,
    build_experience,
    frozen_passes,
    make_experience,
    sample,
)

# A PPO checkpoint is taken between iterations and must hold the state after the iteration's updates (with
# the RNG and data position of the next one); Lightning's advice to save a pre-optimization copy does not apply.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class PPOModule(PPOEvaluation, PPOOptimization, CausalLMModule):
    """PPO on one base model with named adapters (see the module docstring). Logged per iteration under TRL's
    names: ``objective/*``, ``policy/*``, ``loss/*``, ``val/*`` (the value function), ``rollout/*``, ``lr``,
    ``perf/*``; the full list with meanings is in docs/tensorboard.md.

    Args:
        model: The policy's base model and, in ``adapter``, the SFT run's ``final`` folder: the policy starts
            from it and the reference is it. Without an adapter the policy gets fresh LoRA weights and the
            reference is the base model alone.
        lora: LoRA settings for fresh adapters (the policy without SFT adapter; the value without reward adapter).
        optim: Optimizer and schedule (one step per minibatch).
        reward_model: The reward run's ``final`` folder (adapter + ``score_head.safetensors``).
        reward_function: Instead of a reward model, ``module:function`` with
            ``f(prompts: list[str], responses: list[str]) -> list[float]`` (rule-based rewards); the prompts as
            the user wrote them (a text prompt's text, a conversation's last user message).
        reference_adapter: The reference's adapter folder when it is not the policy's start (``model.adapter``):
            in rounds of feedback the policy starts from the previous round's PPO policy while the reference
            stays the SFT adapter, so the KL penalty keeps every round near SFT instead of near the round
            before (a leash that would otherwise move with the policy). Default: ``model.adapter``.
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
        reference_adapter: str | None = None,
        separate_reward: bool = False,
        separate_value: bool = False,
        rollout: GenerationConfig = GenerationConfig(max_new_tokens=64),  # noqa: B008
        ppo: PPOConfig = PPOConfig(),  # noqa: B008
        rewards: RewardShaping = RewardShaping(),  # noqa: B008
        evaluation: PPOEvalConfig = PPOEvalConfig(),  # noqa: B008
        logprob_chunk_size: int = 1024,
    ) -> None:
        model = check_options(model, lora, rollout, reward_model, reward_function, separate_value)
        if logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        lora = dataclasses.replace(lora, dropout=0.0)  # every dropout is off: the saved adapter config says so too
        super().__init__(model, lora, optim)
        self.automatic_optimization = False
        self.reward_model_path, self.reward_function_path = reward_model, reward_function
        self.reference_adapter = reference_adapter
        self.separate_reward, self.separate_value = separate_reward, separate_value
        self.rollout_config, self.ppo, self.shaping, self.eval_config = rollout, ppo, rewards, evaluation
        self.logprob_chunk_size = logprob_chunk_size
        self.kl_controller = rewards.kl_controller()
        self.reward_fn = ScoreFunction(reward_function, "reward_function") if reward_function else None
        self.gold_fn = ScoreFunction(evaluation.gold_function, "gold_function") if evaluation.gold_function else None
        self.stop_ids: list[int] = []  # set in configure_model: the model's generation config adds its EOS ids
        self.roles: dict = {}
        self.reward_head = self.value_head = self.reward_backbone = self.value_backbone = None
        self.scorer: RewardScorer | None = None
        self._grad_norms: list[dict[str, torch.Tensor]] = []
        self.timer, self.health = PhaseTimer(), PPOHealthCheck()
        self._eval_records: list[dict] = []
        self.overoptimization: list[dict] = []  # one point per evaluation: KL, reward-model and gold scores
        self.last_stats: dict[str, float] = {}
        self.final_evaluation: dict | None = None
        self.episodes = 0  # prompts rolled out so far, all ranks

    # --- models -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.require_folders()
        # a bad rollout.stop_tokens entry is refused before any weight is loaded
        stop_token_ids(self.tokenizer, (), self.rollout_config.stop_tokens, "model.rollout.stop_tokens")
        models = build_roles(
            self.model_config, self.lora_config, self.reward_model_path, self.separate_reward, self.separate_value,
            self._target_device(), self.tokenizer, reference_adapter=self.reference_adapter,
        )  # fmt: skip
        self.model, self.roles = models.model, models.roles
        self.reward_head, self.value_head = models.reward_head, models.value_head
        self.reward_backbone, self.value_backbone = models.reward_backbone, models.value_backbone
        source = f"the reward model {self.reward_model_path}"
        self.scorer = RewardScorer(self.roles["reward"], self.reward_fn, self.tokenizer, source)
        self.train()
        eos = generation_eos_ids(self.model)
        stops = self.rollout_config.stop_tokens
        self.stop_ids = stop_token_ids(self.tokenizer, eos, stops, "model.rollout.stop_tokens")
        reward = self.reward_function_path or self.reward_model_path
        rank_zero_info(f"ppo: {models.describe(self.model_config.adapter, reward, self.reference_adapter)}")

    def configure_callbacks(self) -> list:
        """Phase timing, and the health check unless the trainer was given one (with its own ``every``)."""
        given = any(isinstance(c, PPOHealthCheck) for c in self.trainer.callbacks)
        return [self.timer] if given else [self.timer, self.health]

    @property
    def iteration(self) -> int:
        """0-based index of the current PPO iteration (the x-axis of the logged scalars)."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped if self._trainer is not None else 0

    # --- the roles' passes, one call each --------------------------------------------------------------------
    def rollout(self, prompts, prompt_mask, role: str = "policy", temperature: float | None = None, texts=None):
        """``role``'s responses to left-padded prompts (a :class:`~.rollout.Rollout`); a response ends at the
        first of ``self.stop_ids``. ``temperature`` replaces the rollout's."""
        cfg = self.rollout_config
        if temperature is not None:
            cfg = dataclasses.replace(cfg, temperature=temperature)
        return sample(self.roles[role], prompts, prompt_mask, cfg, self.stop_ids, self.tokenizer.pad_token_id, texts)

    def sample(self, prompts, prompt_mask, role: str = "policy", temperature: float | None = None):
        """:meth:`rollout` as ``(sequences, attention_mask, response_mask, ended)``, an evaluation sampler."""
        return tuple(self.rollout(prompts, prompt_mask, role, temperature))[:4]

    def score(self, sequences, attention_mask, prompt_length: int, prompt_texts=None) -> torch.Tensor:
        """Raw reward ``(b,)`` of ``[prompt | response]`` sequences (:class:`~.rollout.RewardScorer`)."""
        return self.scorer(sequences, attention_mask, prompt_length, prompt_texts, f"at iteration {self.iteration}")

    # --- one iteration ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        device = self.device
        with self.timer.phase("rollout", device):
            rollout = self.rollout(batch["input_ids"], batch["attention_mask"], texts=batch.get("prompt_text"))
        with self.timer.phase("scoring", device):
            source, build, built = self.experience_source(rollout)
        with self.timer.phase("training", device):
            update_stats = self.update(source, build)
        rollout_stats = built[1]
        self.kl_controller.update(rollout_stats.kl.item(), len(rollout.sequences) * self.trainer.world_size)
        self.log_iteration(rollout, rollout_stats.tags() | update_stats.tags())

    def experience_source(self, rollout: Rollout, in_first_pass: bool | None = None):
        """Step 2: ``(source, build, built)`` for :meth:`update`. When the update's first pass gives the old
        log-probs (``in_first_pass``, by default :meth:`builds_in_first_pass`), the frozen passes run now and
        ``source`` is the rollout, ``build`` makes the experience from that pass; otherwise ``source`` is the
        experience (a policy pass of its own) and ``build`` is ``None``. ``built`` holds
        ``(Experience, RolloutStats)`` once built."""
        built: list = []
        if in_first_pass is None:
            in_first_pass = self.builds_in_first_pass(len(rollout.sequences))
        if not in_first_pass:
            built.extend(self.make_experience(rollout))
            return built[0], None, built
        frozen = self.frozen_passes(rollout)

        def build(logprobs, entropy):
            built.extend(self.build_experience(rollout, frozen, logprobs, entropy))
            return built[0]

        return rollout, build, built

    def builds_in_first_pass(self, rows: int) -> bool:
        """Whether the update's first pass gives the old log-probs (a rollout batch that is one minibatch
        and one micro-batch), instead of a policy pass during scoring."""
        return self.ppo.num_minibatches == 1 and (self.ppo.micro_batch_size or rows) >= rows

    def frozen_passes(self, rollout: Rollout) -> FrozenPasses:
        """The reference, value and reward passes of step 2, in eval mode."""
        with self.eval_mode():
            return frozen_passes(
                rollout, self.roles["reference"], self.roles["value"], self.score, self.rollout_config.temperature,
                self.ppo.micro_batch_size, self.logprob_chunk_size,
            )  # fmt: skip

    def build_experience(self, rollout: Rollout, frozen: FrozenPasses, logprobs, entropy):
        """Step 2's rewards, GAE and statistics from the policy's old log-probs (see :func:`build_experience`)."""
        return build_experience(rollout, frozen, logprobs, entropy, self.kl_controller.beta, self.ppo, self.shaping)

    def make_experience(self, rollout: Rollout):
        """Step 2 (see the module docstring) with a policy pass of its own, in eval mode."""
        with self.eval_mode():
            return make_experience(
                rollout, self.roles["policy"], self.roles["reference"], self.roles["value"], self.score,
                self.kl_controller.beta, self.ppo, self.shaping, self.rollout_config.temperature,
                self.logprob_chunk_size,
            )  # fmt: skip

    @contextlib.contextmanager
    def eval_mode(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def log_iteration(self, rollout: Rollout, stats: dict) -> None:
        """Step 5: log the iteration's statistics (means over ranks; the KL is already global)."""
        world = self.trainer.world_size
        prompt_tokens = rollout.attention_mask.sum().item() * world
        self.timer.count("rollout", rollout.mask.sum().item() * world)
        self.timer.count("scoring", prompt_tokens)
        self.timer.count("training", prompt_tokens * self.ppo.ppo_epochs)
        self.episodes += len(rollout.sequences) * world
        stats = {k: float(v) for k, v in stats.items()}
        stats |= {"lr": self.optimizers().param_groups[0]["lr"], "train/nonfinite_steps": float(self.nonfinite.total)}
        stats["episode"] = float(self.episodes)
        stats |= self.timer.metrics()  # every phase of the iteration has ended
        self.last_stats = stats
        self.log_dict(stats, batch_size=len(rollout.sequences), sync_dist=True)
        self.log("objective/scores_bar", stats["objective/scores"], prog_bar=True, logger=False)
        self.log("kl", stats["objective/kl"], prog_bar=True, logger=False)

    # --- run start and end ------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.record_heldout_prompts()
        folders = {"reward model": self.reward_model_path, "SFT adapter": self.model_config.adapter,
                   "reference adapter": self.reference_adapter}  # fmt: skip
        datamodule = getattr(self.trainer, "datamodule", None)
        for message in chat_template_mismatches(datamodule, folders):
            rank_zero_warn(message)
        self.check_inputs(datamodule)
        check_strategy(self.trainer.strategy)

    def named_folders(self) -> dict[str, str | None]:
        folders = {"model.reward_model": self.reward_model_path, "model.reference_adapter": self.reference_adapter}
        return super().named_folders() | folders

    def check_inputs(self, datamodule, folders: bool = True) -> None:
        """The stop tokens (the reward and gold functions are imported when the module is built), and a
        shipped task's gold rule kept with other prompts."""
        super().check_inputs(datamodule, folders)
        stop_token_ids(self.tokenizer, (), self.rollout_config.stop_tokens, "model.rollout.stop_tokens")
        gold, train_files = self.eval_config.gold_function, getattr(datamodule, "train_files", None)
        if gold and train_files:
            what = "the eval/gold_* figures judge answers to your prompts by that task's rule"
            message = shipped_default_warning("evaluation.gold_function", gold, train_files, what)
            if message:
                rank_zero_warn(message)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo"] = {
            "kl_controller": self.kl_controller.state_dict(),
            "episodes": self.episodes,
            "overoptimization": self.overoptimization,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.split_single_group_state(checkpoint)
        if "ppo" in checkpoint:
            self.kl_controller.load_state_dict(checkpoint["ppo"]["kl_controller"])
            self.episodes = checkpoint["ppo"]["episodes"]
            self.overoptimization = checkpoint["ppo"].get("overoptimization", [])

    def on_train_end(self) -> None:
        self.final_evaluation = self.evaluate_at_end() if self.eval_config.at_end else None  # on every rank
        super().on_train_end()

    def save_weights(self, folder: Path) -> None:
        save_trained_roles(folder, self.model, self.value_backbone, self.value_head)

    def run_info(self) -> RunInfo:
        info = super().run_info()
        reward = self.reward_model_path or self.reward_function_path
        info.extra |= {
            "reference": self.reference_adapter or self.model_config.adapter,
            "reward_model": reward,
            "kl_coef": self.kl_controller.beta,
            "stop_tokens": list(self.rollout_config.stop_tokens),  # export writes the stop set the run used
        }
        return info

    def save_final(self, folder: Path | None = None) -> Path:
        folder = super().save_final(folder)
        if self.final_evaluation is not None:
            (folder / EVALUATION_FILE).write_text(json.dumps(self.final_evaluation, indent=2) + "\n")
        return folder
