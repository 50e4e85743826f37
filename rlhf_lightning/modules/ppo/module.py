"""Stage 3: PPO against the reward model, with a per-token KL penalty towards the SFT reference.

One training batch of prompts is one PPO iteration, five steps (:meth:`PPOModule.training_step`):

1. rollout: the policy samples a response to each prompt (KV cache, eval mode, full distribution);
2. experience, without gradients: the policy's log-probs (at ``logits / T``) and entropies, the reference's
   log-probs, the values, the score at the last real token; rewards ``-beta * KL`` on every token plus the
   shaped score on the last; GAE; whitened advantages (:mod:`~rlhf_lightning.modules.ppo.rollout`);
3. update: ``ppo_epochs`` passes over shuffled minibatches, clipped policy and value losses, one optimizer
   step per minibatch, Lightning manual optimization (:mod:`~rlhf_lightning.modules.ppo.update`);
4. the KL coefficient adapts (with ``rewards.adaptive_kl``);
5. the iteration's statistics are logged; the health check reads them (:mod:`rlhf_lightning.callbacks`).

Policy, reference, value and reward share one (optionally 4-bit) base model as named LoRA adapters
(:mod:`~rlhf_lightning.modules.ppo.roles`). ``trainer.global_step`` counts optimizer steps
(``ppo_epochs * num_minibatches`` per iteration); TensorBoard's x-axis counts iterations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from rlhf_lightning.callbacks import PhaseTimer, PPOHealthCheck
from rlhf_lightning.data.chat import stop_token_ids
from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
from rlhf_lightning.models.adapters import role_logprobs, role_values
from rlhf_lightning.models.generation import generation_eos_ids
from rlhf_lightning.models.reward import save_head
from rlhf_lightning.models.run_folder import EVALUATION_FILE, VALUE_FOLDER, RunFolder
from rlhf_lightning.models.score_function import ScoreFunction
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.optim import OptimConfig, build_optimizer, build_scheduler
from rlhf_lightning.modules.ppo.config import PPOConfig, PPOEvalConfig, RewardShaping
from rlhf_lightning.modules.ppo.evaluation import PPOEvaluation
from rlhf_lightning.modules.ppo.roles import ADAPTERS, build_roles
from rlhf_lightning.modules.ppo.rollout import RewardScorer, Rollout, make_experience, penalty, sample, shape_scores
from rlhf_lightning.modules.ppo.update import ppo_update
from rlhf_lightning.ops import AdaptiveKLController, FixedKLController

# A PPO checkpoint is taken between iterations and must hold the state after the iteration's updates (with
# the RNG and data position of the next one); Lightning's advice to save a pre-optimization copy does not apply.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")


class PPOModule(PPOEvaluation, CausalLMModule):
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
        evaluation: PPOEvalConfig = PPOEvalConfig(),  # noqa: B008
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
        if not model.disable_dropout:
            rank_zero_warn("PPO turns every dropout off (model.disable_dropout: false is ignored)")
            model = dataclasses.replace(model, disable_dropout=True)
        super().__init__(model, lora, optim)
        self.automatic_optimization = False
        self.reward_model_path, self.reward_function_path = reward_model, reward_function
        self.separate_reward, self.separate_value = separate_reward, separate_value
        self.rollout_config, self.ppo, self.shaping, self.eval_config = rollout, ppo, rewards, evaluation
        self.logprob_chunk_size = logprob_chunk_size
        if rewards.adaptive_kl:
            self.kl_controller = AdaptiveKLController(rewards.kl_coef, rewards.kl_target, rewards.kl_horizon)
        else:
            self.kl_controller = FixedKLController(rewards.kl_coef)
        self.reward_fn = ScoreFunction(reward_function, "reward_function") if reward_function else None
        self.gold_fn = ScoreFunction(evaluation.gold_function, "gold_function") if evaluation.gold_function else None
        self.stop_ids: list[int] = []  # set in configure_model: the model's generation config adds its EOS ids
        self.roles: dict = {}
        self.reward_head = self.value_head = self.reward_backbone = self.value_backbone = None
        self.scorer: RewardScorer | None = None
        self._groups: dict[str, list[torch.nn.Parameter]] | None = None
        self._grad_norms: list[dict[str, torch.Tensor]] = []
        self.timer, self.health = PhaseTimer(), PPOHealthCheck()
        self._eval_records: list[dict] = []
        self.overoptimization: list[dict] = []  # one point per evaluation: KL, reward-model and gold scores
        self.last_stats: dict[str, float] = {}
        self.episodes = 0  # prompts rolled out so far, all ranks
        self.save_hyperparameters()

    # --- models -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        # a bad rollout.stop_tokens entry is refused before any weight is loaded
        stop_token_ids(self.tokenizer, (), self.rollout_config.stop_tokens, "model.rollout.stop_tokens")
        models = build_roles(
            self.model_config, self.lora_config, self.reward_model_path, self.separate_reward, self.separate_value,
            self._target_device(), self.tokenizer,
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
        adapter = self.model_config.adapter
        rank_zero_info(
            f"ppo: policy from {adapter or 'fresh LoRA'}, reference {'SFT adapter' if adapter else 'base model'}, "
            f"reward {self.reward_function_path or self.reward_model_path}, "
            f"value {'own model' if self.separate_value else 'adapter'}"
        )

    def configure_callbacks(self) -> list:
        return [self.timer, self.health]

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

    def logprobs(self, role: str, sequences, attention_mask, mask, with_entropy: bool = False):
        """Response log-probs ``(b, r)`` of ``role`` at the rollout temperature."""
        temperature = self.rollout_config.temperature
        chunk = self.logprob_chunk_size
        return role_logprobs(self.roles[role], sequences, attention_mask, mask, temperature, chunk, with_entropy)

    def values(self, sequences, attention_mask, response_length: int) -> torch.Tensor:
        return role_values(self.roles["value"], sequences, attention_mask, response_length)

    def shape_scores(self, raw, ended, empty) -> torch.Tensor:
        return shape_scores(raw, ended, empty, self.shaping)

    def penalty(self, scores, ended, empty) -> torch.Tensor:
        return penalty(scores, ended, empty, self.shaping)

    # --- one iteration ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        device = self.device
        with self.timer.phase("rollout", device):
            rollout = self.rollout(batch["input_ids"], batch["attention_mask"], texts=batch.get("prompt_text"))
        with self.timer.phase("scoring", device):
            experience, rollout_stats = self.make_experience(rollout)
        with self.timer.phase("training", device):
            update_stats = self.update(experience)
        self.kl_controller.update(rollout_stats.kl.item(), len(rollout.sequences) * self.trainer.world_size)
        self.log_iteration(rollout, rollout_stats.tags() | update_stats.tags())

    def make_experience(self, rollout: Rollout):
        """Step 2 (see the module docstring), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return make_experience(
                rollout, self.roles["policy"], self.roles["reference"], self.roles["value"], self.score,
                self.kl_controller.beta, self.ppo, self.shaping, self.rollout_config.temperature,
                self.logprob_chunk_size,
            )  # fmt: skip
        finally:
            self.train(was_training)

    def update(self, experience):
        """Step 3: the PPO epochs; gradients are checked and clipped inside ``optimizer.step()``
        (:meth:`on_before_optimizer_step`)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()

        def step() -> list[dict[str, torch.Tensor]]:
            self._grad_norms = []
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            return self._grad_norms

        temperature = self.rollout_config.temperature
        return ppo_update(experience, self.roles["policy"], self.roles["value"], self.ppo, temperature,
                          self.manual_backward, step, self.logprob_chunk_size)  # fmt: skip

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
        self.last_stats = stats
        self.log_dict(stats, batch_size=len(rollout.sequences), sync_dist=True)
        self.log("objective/scores_bar", stats["objective/scores"], prog_bar=True, logger=False)
        self.log("kl", stats["objective/kl"], prog_bar=True, logger=False)

    # --- gradients --------------------------------------------------------------------------------------------
    def gradient_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters of the policy (its adapter) and of the value function (its adapter or own
        model, and its head); found once, the trainable set is fixed after ``configure_model``."""
        if self._groups is None:
            self._groups = {"policy": [], "value": []}
            for name, p in self.named_parameters():
                if p.requires_grad:
                    is_policy = f".{ADAPTERS['policy']}." in name and not name.startswith("value_backbone.")
                    self._groups["policy" if is_policy else "value"].append(p)
        return self._groups

    def clip_policy_and_value_gradients(self) -> dict[str, torch.Tensor]:
        """Clip the policy's and the value function's gradients to ``ppo.max_grad_norm`` each (value gradients
        are in reward units: under one shared norm a large reward scale would shrink every policy step).
        Returns the norms before clipping, ``{"policy": ..., "value": ...}``."""
        norms = {}
        for group, params in self.gradient_groups().items():
            grads = [p for p in params if p.grad is not None]
            if not grads:
                norm = torch.zeros((), device=self.device)
            elif self.ppo.max_grad_norm is None:
                norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
            else:
                norm = torch.nn.utils.clip_grad_norm_(grads, self.ppo.max_grad_norm)
            norms[group] = norm.detach()
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

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.optim_config)
        trainer, per_iteration = self.trainer, self.ppo.ppo_epochs * self.ppo.num_minibatches
        limits = [trainer.max_steps] if trainer.max_steps != -1 else []
        if trainer.max_epochs not in (None, -1):
            if trainer.train_dataloader is None:
                trainer.fit_loop.setup_data()
            if math.isfinite(trainer.num_training_batches):
                limits.append(int(trainer.num_training_batches) * trainer.max_epochs * per_iteration)
        if not limits:
            raise ValueError("PPO needs trainer.max_steps or trainer.max_epochs to plan its learning-rate schedule")
        scheduler = build_scheduler(optimizer, min(limits), self.optim_config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- run start and end ------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.record_heldout_prompts()
        self.check_chat_template(getattr(self.trainer, "datamodule", None))
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(
                "PPO under DDP needs --trainer.strategy=ddp_find_unused_parameters_true: each backward pass "
                "reaches only the policy's or only the value's adapter, and DDP must be told the rest is unused"
            )

    def check_chat_template(self, datamodule) -> None:
        """Warn when the prompts DataModule formats text prompts otherwise than the reward model's and the SFT
        model's text rows were (``data.chat_template`` against the mode their run folders record): the policy
        would then answer, and be scored on, sequences shaped unlike those the reward model learned from."""
        examples = getattr(datamodule, "train_examples", None) or []
        if not any(isinstance((e.row or {}).get("prompt"), str) for e in examples):
            return  # only text prompts depend on the option
        mode = datamodule.chat_template
        for name, folder in {"reward model": self.reward_model_path, "SFT adapter": self.model_config.adapter}.items():
            recorded = RunFolder(folder).chat_template if folder and Path(folder).is_dir() else None
            if recorded is not None and recorded != mode and "never" in (recorded, mode):
                rank_zero_warn(
                    f"ppo: text prompts are formatted with data.chat_template: {mode}, but the {name} {folder} "
                    f"was trained with chat_template: {recorded}: set data.chat_template: {recorded} so the policy "
                    "answers in the format the reward model scores "
                    "(docs/data-formats.md#text-rows-on-chat-models-chat_template)"
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo"] = {
            "kl_controller": self.kl_controller.state_dict(),
            "episodes": self.episodes,
            "overoptimization": self.overoptimization,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ppo" in checkpoint:
            self.kl_controller.load_state_dict(checkpoint["ppo"]["kl_controller"])
            self.episodes = checkpoint["ppo"]["episodes"]
            self.overoptimization = checkpoint["ppo"].get("overoptimization", [])

    def on_train_end(self) -> None:
        evaluation = self.evaluate_at_end() if self.eval_config.at_end else None
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
        self.model.save_pretrained(folder, selected_adapters=[ADAPTERS["policy"]])
        if self.separate_value:
            self.value_backbone.save_pretrained(folder / VALUE_FOLDER)
        elif ADAPTERS["value"] in self.model.peft_config:  # peft writes a named adapter to folder/<name>
            self.model.save_pretrained(folder, selected_adapters=[ADAPTERS["value"]])
        save_head(self.value_head, folder / VALUE_FOLDER)
        self.tokenizer.save_pretrained(folder)
        info = self.run_info(
            adapter=True,
            reference=self.model_config.adapter,
            reward_model=self.reward_model_path or self.reward_function_path,
            kl_coef=self.kl_controller.beta,
        )
        RunFolder.write_info(folder, info)
        return folder
