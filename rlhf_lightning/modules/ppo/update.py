"""The second half of a PPO iteration: ``ppo_epochs`` passes over the rollout batch, each reshuffled into
``num_minibatches`` minibatches, with the clipped policy loss and the clipped value loss (Schulman et al.
2017), one optimizer step per minibatch.

Backward passes and optimizer steps are the caller's (Lightning's manual optimization): :func:`ppo_update`
gets them as ``backward(loss)`` and ``step() -> [gradient norms]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import torch

from rlhf_lightning.models.adapters import Role, active, response_logprobs, response_values, role_hidden_states
from rlhf_lightning.modules.ppo.config import PPOConfig
from rlhf_lightning.modules.ppo.rollout import Experience, Rollout, micro_batches
from rlhf_lightning.ops import kl_penalty_loss, masked_mean, ppo_policy_loss, ppo_value_loss
from rlhf_lightning.ops.masked import global_mean_weight, masked_count, world_size


class UpdateStats(NamedTuple):
    """Means over every micro-batch of the update (0-d tensors), logged under TRL's names (:data:`UPDATE_TAGS`)."""

    policy_loss: torch.Tensor
    """The clipped surrogate alone (a KL loss term is ``kl_loss``)."""
    value_loss: torch.Tensor
    kl_loss: torch.Tensor | None
    """``mean((p / p_old) * kl_t)``, the KL penalty as a loss term before ``beta`` (``None``: the KL is in the
    rewards)."""
    policy_clipfrac: torch.Tensor
    """Fraction of tokens where the clipped policy objective was the binding one."""
    approxkl: torch.Tensor
    """``0.5 * mean((log ratio)^2)``: how far the update moved the policy from the rollout's."""
    ratio: torch.Tensor
    ratio_var: torch.Tensor
    value_clipfrac: torch.Tensor
    entropy: torch.Tensor | None
    """Mean entropy over the passes that computed it: every pass with ``entropy_coef > 0``, else only a pass
    that built the experience (``None`` when none did; the rollout's entropy is ``objective/entropy``)."""
    first_ratio: torch.Tensor
    """Mean ratio on the first micro-batch of the first epoch: exactly 1 when training and rollout forward
    passes agree (by construction when the first pass built the experience)."""
    first_approxkl: torch.Tensor
    policy_grad_norm: torch.Tensor | None
    """Mean norm before clipping over the applied steps (``None`` when every step was skipped as non-finite)."""
    value_grad_norm: torch.Tensor | None

    def tags(self) -> dict[str, torch.Tensor]:
        return {UPDATE_TAGS[name]: value for name, value in self._asdict().items() if value is not None}


UPDATE_TAGS = {
    "policy_loss": "loss/policy_avg",
    "value_loss": "loss/value_avg",
    "kl_loss": "loss/kl_avg",
    "policy_clipfrac": "policy/clipfrac_avg",
    "approxkl": "policy/approxkl_avg",
    "ratio": "val/ratio",
    "ratio_var": "val/ratio_var",
    "value_clipfrac": "val/clipfrac_avg",
    "entropy": "policy/entropy_avg",
    "first_ratio": "policy/first_ratio",
    "first_approxkl": "policy/first_approxkl",
    "policy_grad_norm": "policy/grad_norm",
    "value_grad_norm": "val/grad_norm",
}
"""TensorBoard tag of each :class:`UpdateStats` field (TRL's names; ``val/`` is the value function)."""


def ppo_update(
    experience: Experience | Rollout,
    policy: Role,
    value: Role,
    cfg: PPOConfig,
    temperature: float,
    backward: Callable[[torch.Tensor], None],
    step: Callable[[], list[dict[str, torch.Tensor]]],
    chunk_size: int = 1024,
    build: Callable[[torch.Tensor, torch.Tensor], Experience] | None = None,
    kl_coef: float | None = None,
    kl_estimator: Literal["k1", "k3"] = "k1",
) -> UpdateStats:
    """Train on one :class:`Experience`. Each micro-batch's losses are scaled by its share of the minibatch's
    response tokens, so the gradients add up to the minibatch's token mean. Under DDP the share is of the
    minibatch's tokens over every rank (:func:`~rlhf_lightning.ops.masked.global_mean_weight`), so that the
    gradient DDP averages is the token mean over the union of the ranks' minibatches, as one process would
    compute it on all their rows: every response token weighs the same, however the rows were sharded. The
    logged losses stay per-micro-batch token means (averaged over micro-batches and ranks). The policy's loss is
    back-propagated while its adapter is active, then the value's (gradient checkpointing re-runs a layer with
    the adapter active at backward time). ``step()`` applies the accumulated gradients and returns the
    gradient norms it measured (none for a step it skipped).

    With ``build``, ``experience`` is the :class:`Rollout` and the rollout batch must be one forward pass (one
    minibatch, one micro-batch): the first pass's log-probs and entropies ``(b, r)``, detached, are the old
    ones, ``build(logprobs, entropy)`` turns them into the experience, and the pass goes on to its loss. This
    saves the policy's scoring pass; the first ratio is then exactly 1 by construction.

    Micro-batches are trimmed of all-padding columns (:func:`~rlhf_lightning.modules.ppo.rollout.micro_batches`).
    The entropy enters the graph only with ``cfg.entropy_coef > 0``; otherwise it is computed, for logging,
    on the passes that build the experience only.

    With ``kl_coef`` (``rewards.kl_penalty: loss``; the experience's rewards then hold no KL), the policy loss
    gets ``kl_coef * kl_penalty_loss`` with ``kl_estimator`` (:func:`~rlhf_lightning.ops.kl_penalty_loss`).
    The value loss is not weighted: it reaches only the value's parameters, whose step size is their learning
    rate (``ppo.value_lr_scale``)."""
    source = experience
    exp = None if build is not None else experience
    b, r = source.mask.shape
    totals: dict[str, list[torch.Tensor]] = {}

    def record(key: str, v: torch.Tensor) -> None:
        totals.setdefault(key, []).append(v.detach())

    ranks = world_size()
    minibatches = max(1, min(cfg.num_minibatches, b))
    if build is not None and (minibatches > 1 or (cfg.micro_batch_size or b) < b):
        raise ValueError("building the experience in the first pass needs one minibatch of one micro-batch")
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(b, device=source.mask.device)
        for minibatch in range(minibatches):
            index = order[minibatch * b // minibatches : (minibatch + 1) * b // minibatches]
            if exp is None:  # the pass that builds the experience keeps the rollout's row order
                index = torch.arange(b, device=source.mask.device)
            tokens = masked_count(source.mask[index], all_reduce=True)  # over every rank
            for mb in micro_batches(source.sequences, source.attention_mask, source.mask, index, cfg.micro_batch_size):
                weight = global_mean_weight(mb.mask, tokens, ranks)
                first = exp is None
                with active(policy):
                    out = response_logprobs(
                        policy, mb.sequences, mb.attention_mask, mb.mask, temperature, chunk_size,
                        with_entropy=cfg.entropy_coef > 0 or first,
                    )  # fmt: skip
                    if first:
                        logprobs, entropy = (source.mask.new_zeros((b, r), dtype=torch.float32) for _ in range(2))
                        mb.place(logprobs, out.logprobs.detach())
                        mb.place(entropy, out.entropy.detach())
                        exp = build(logprobs, entropy)
                    pg = ppo_policy_loss(out.logprobs, mb.take(exp.logprobs), mb.take(exp.advantages), mb.mask,
                                         cfg.clip_eps)  # fmt: skip
                    loss = pg.loss
                    if kl_coef is not None:
                        kl_loss = kl_penalty_loss(out.logprobs, mb.take(exp.logprobs), mb.take(exp.ref_logprobs),
                                                  mb.mask, kl_estimator)  # fmt: skip
                        record("kl_loss", kl_loss)
                        loss = loss + kl_coef * kl_loss
                    if out.entropy is not None:
                        entropy_mean = masked_mean(out.entropy, mb.mask)
                        record("entropy", entropy_mean)
                        if cfg.entropy_coef > 0:
                            loss = loss - cfg.entropy_coef * entropy_mean
                    backward(weight * loss)
                with active(value):
                    hidden = role_hidden_states(value, mb.sequences, mb.attention_mask)
                    values = response_values(value.head, hidden, mb.response_length)
                    vf, vf_clipfrac = ppo_value_loss(values, mb.take(exp.values), mb.take(exp.returns), mb.mask,
                                                     cfg.value_clip)  # fmt: skip
                    backward(weight * vf)
                if "first_ratio" not in totals:  # the first micro-batch of the first epoch
                    record("first_ratio", pg.ratio)
                    record("first_approxkl", pg.approxkl)
                for key, v in (
                    ("policy_loss", pg.loss), ("value_loss", vf), ("policy_clipfrac", pg.clipfrac),
                    ("approxkl", pg.approxkl), ("ratio", pg.ratio), ("value_clipfrac", vf_clipfrac),
                ):  # fmt: skip
                    record(key, v)
            for norms in step():
                record("policy_grad_norm", norms["policy"])
                record("value_grad_norm", norms["value"])
    means = {k: torch.stack(v).mean() for k, v in totals.items()}
    ratios = totals["ratio"]
    means["ratio_var"] = torch.stack(ratios).var() if len(ratios) > 1 else torch.zeros(())
    return UpdateStats(**{name: means.get(name) for name in UpdateStats._fields})


def gradient_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], policy_adapter: str
) -> dict[str, list[torch.nn.Parameter]]:
    """The trainable parameters of the policy (its adapter, ``policy_adapter``) and of the value function (its
    adapter or own model ``value_backbone``, and its head)."""
    groups: dict[str, list[torch.nn.Parameter]] = {"policy": [], "value": []}
    for name, p in named_parameters:
        if p.requires_grad:
            is_policy = f".{policy_adapter}." in name and not name.startswith("value_backbone.")
            groups["policy" if is_policy else "value"].append(p)
    return groups


def clip_gradients(
    groups: dict[str, list[torch.nn.Parameter]], max_norm: float | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Clip each group's gradients to ``max_norm`` (``None``: measure only), the policy's and the value
    function's separately: value gradients are in reward units, and under one shared norm a large reward scale
    would shrink every policy step. Returns each group's norm before clipping."""
    norms = {}
    for group, params in groups.items():
        grads = [p for p in params if p.grad is not None]
        if not grads:
            norm = torch.zeros((), device=device)
        elif max_norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        else:
            norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
        norms[group] = norm.detach()
    return norms
