"""Warnings while PPO trains, each naming the problem and what to do: a negative KL, a first ratio that is not
1, a ratio that drifted outside the clip range, responses that stop ending, and reward hacking (the score
rising while the answers collapse). See docs/ppo.md and docs/troubleshooting.md."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

HACKING_KEYS = ("objective/raw_scores", "rollout/response_length", "rollout/distinct_2")


class PPOHealthCheck(L.Callback):
    """Reads the PPO module's ``last_stats`` (its logged scalars) after every iteration; a warning repeats at
    most every ``every`` iterations. The first iteration's score, length and distinct-2 are kept (and
    checkpointed) as the reference for the reward-hacking warning.

    Args:
        every: Iterations between two warnings of the same kind.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.first: dict[str, float] | None = None
        self.last_warning: dict[str, int] = {}

    def _warn(self, key: str, message: str, iteration: int) -> None:
        if iteration - self.last_warning.get(key, -self.every) >= self.every:
            self.last_warning[key] = iteration
            rank_zero_warn(message)

    def check(
        self,
        stats: dict[str, float],
        iteration: int,
        clip_eps: float,
        max_new_tokens: int,
        stop_tokens: list[str],
    ) -> None:
        """Warn about what ``stats`` (one iteration's ``last_stats``) show."""
        kl, stderr = stats["objective/kl"], stats.get("objective/kl_stderr", 0.0)
        if kl < -0.1 and kl < -3 * stderr:  # beyond sampling noise: a mean of few responses can dip below 0
            self._warn(
                "kl",
                f"objective/kl is negative ({kl:.3f}, standard error {stderr:.3f}): the rollout's sampling does "
                "not match the log-prob computation (top_k/top_p, temperature, or a model that differs between "
                "generation and scoring). See docs/troubleshooting.md.",
                iteration,
            )
        if abs(stats["policy/first_ratio"] - 1.0) > 1e-3:
            self._warn(
                "ratio",
                f"the PPO ratio on the first minibatch is {stats['policy/first_ratio']:.4f}, not 1: training and "
                "rollout forward passes disagree (dropout, non-deterministic kernels).",
                iteration,
            )
        if abs(stats["val/ratio"] - 1.0) > clip_eps:
            self._warn("drift", f"val/ratio drifted to {stats['val/ratio']:.3f}: lower the learning rate", iteration)
        self._check_hacking(stats, iteration)
        if stats["rollout/ended_fraction"] < 0.5:
            self._warn(
                "eos",
                f"only {100 * stats['rollout/ended_fraction']:.0f}% of responses ended with a stop token "
                f"{stop_tokens} within {max_new_tokens} tokens: raise rollout.max_new_tokens, check the SFT model, "
                "or add the model's end-of-turn token to rollout.stop_tokens "
                "(docs/troubleshooting.md#ppo-responses-stop-ending)",
                iteration,
            )

    def _check_hacking(self, stats: dict[str, float], iteration: int) -> None:
        """Warn when the reward-model score rose above the first iteration's while the answers collapsed: half
        the first iteration's length or distinct-2, or over 20% empty answers."""
        if self.first is None:
            self.first = {k: stats[k] for k in HACKING_KEYS}
            return
        first = self.first
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
                iteration,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(pl_module, "last_stats", None)
        if not stats:
            return
        tokenizer, rollout = pl_module.tokenizer, pl_module.rollout_config
        self.check(
            stats,
            pl_module.iteration,
            pl_module.ppo.clip_eps,
            rollout.max_new_tokens,
            tokenizer.convert_ids_to_tokens(pl_module.stop_ids),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first = state_dict.get("first")

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before this callback kept the first iteration's figures with the module's state
        if self.first is None and "ppo" in checkpoint:
            self.first = checkpoint["ppo"].get("first_rollout")
