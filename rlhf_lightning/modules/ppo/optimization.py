"""The optimizer side of the PPO update under Lightning's manual optimization: the optimizer steps of
:func:`~rlhf_lightning.modules.ppo.update.ppo_update`, each guarded against non-finite values and with the
policy's and the value function's gradients clipped separately, the two as parameter groups with their own
learning rates, and the schedule planned over every step."""

from __future__ import annotations

import torch

from rlhf_lightning.modules.optim import build_optimizer, build_scheduler, planned_optimizer_steps
from rlhf_lightning.modules.ppo.roles import ADAPTERS
from rlhf_lightning.modules.ppo.rollout import Experience, Rollout
from rlhf_lightning.modules.ppo.update import UpdateStats, clip_gradients, gradient_groups, ppo_update


class PPOOptimization:
    """Optimization hooks of the PPO module (:class:`~rlhf_lightning.modules.ppo.module.PPOModule` inherits
    them)."""

    _groups: dict[str, list[torch.nn.Parameter]] | None = None
    _grad_norms: list[dict[str, torch.Tensor]]

    def update(self, experience: Experience | Rollout, build=None) -> UpdateStats:
        """Step 3: the PPO epochs (``build``: the experience is built in the first pass, see
        :func:`~rlhf_lightning.modules.ppo.update.ppo_update`); gradients are checked and clipped inside
        ``optimizer.step()`` (:meth:`on_before_optimizer_step`)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()

        def step() -> list[dict[str, torch.Tensor]]:
            self._grad_norms = []
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            return self._grad_norms

        temperature = self.rollout_config.temperature
        kl_coef = self.kl_controller.beta if self.shaping.kl_penalty == "loss" else None
        return ppo_update(experience, self.roles["policy"], self.roles["value"], self.ppo, temperature,
                          self.manual_backward, step, self.logprob_chunk_size, build, kl_coef,
                          self.shaping.kl_estimator)  # fmt: skip

    def on_before_optimizer_step(self, optimizer) -> None:
        """Runs inside ``optimizer.step()``, after ``16-mixed`` unscaled the gradients. A NaN/inf loss or
        gradient is never applied: the guard drops those gradients and the step (still counted, like the
        schedule) leaves every weight and its state alone; under ``16-mixed`` the gradient scaler does that.
        Finite gradients are clipped, the policy's and the value's separately."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self._step_losses = []
        elif not self.step_is_finite(optimizer):
            return
        if self._groups is None:  # the trainable set is fixed after configure_model
            self._groups = gradient_groups(self.named_parameters(), ADAPTERS["policy"])
        self._grad_norms.append(clip_gradients(self._groups, self.ppo.max_grad_norm, self.device))

    def make_optimizer(self) -> torch.optim.Optimizer:
        """One optimizer, two parameter groups: the policy's at ``optim.lr`` first, then the value function's at
        ``ppo.value_lr_scale`` times it."""
        if self._groups is None:
            self._groups = gradient_groups(self.named_parameters(), ADAPTERS["policy"])
        return build_optimizer(self._groups, self.optim_config, {"value": self.ppo.value_lr_scale})

    def split_single_group_state(self, checkpoint: dict) -> None:
        """Convert, in place, the optimizer and schedule state of a checkpoint written when PPO had one
        parameter group (before ``ppo.value_lr_scale``) to today's two, so that such a run resumes: each
        parameter keeps its AdamW moments, the value group's learning rates are the policy's times
        ``ppo.value_lr_scale``. Checkpoints with two groups are left alone."""
        states = checkpoint.get("optimizer_states") or []
        if len(states) != 1 or len(states[0]["param_groups"]) != 1:
            return
        if self._groups is None:
            self._groups = gradient_groups(self.named_parameters(), ADAPTERS["policy"])
        old_order = [p for p in self.parameters() if p.requires_grad]  # the one group's order: build_optimizer's
        position = {id(p): i for i, p in enumerate(old_order)}
        new_order = [p for group in self._groups.values() for p in group]
        state, (group,) = states[0]["state"], states[0]["param_groups"]
        scale = {"policy": 1.0, "value": self.ppo.value_lr_scale}
        groups, start = [], 0
        for name, params in self._groups.items():
            lr_keys = {k: group[k] * scale[name] for k in ("lr", "initial_lr") if k in group}
            groups.append({**group, **lr_keys, "name": name, "params": list(range(start, start + len(params)))})
            start += len(params)
        states[0]["state"] = {
            new: state[position[id(p)]] for new, p in enumerate(new_order) if position[id(p)] in state
        }
        states[0]["param_groups"] = groups
        for scheduler in checkpoint.get("lr_schedulers") or []:
            for key in ("base_lrs", "_last_lr"):
                if len(scheduler.get(key) or []) == 1:
                    scheduler[key] = [scheduler[key][0] * scale[name] for name in self._groups]

    def configure_optimizers(self):
        optimizer = self.make_optimizer()
        total = planned_optimizer_steps(self.trainer, self.ppo.ppo_epochs * self.ppo.num_minibatches)
        scheduler = build_scheduler(optimizer, total, self.optim_config)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
