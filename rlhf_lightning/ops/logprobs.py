"""Token log-probabilities without materialising full-vocabulary float32 logits.

A causal LM's largest activation is its logits: ``(batch, time, vocab)`` in float32 is 1.6 GB for
8 x 1024 tokens and a 49k vocabulary, more than the rest of a LoRA step. Every stage only needs the
log-probability of one token per position (and sometimes the entropy), so we apply the LM head to
the final hidden states a chunk of positions at a time and keep only those numbers. A hand-written
backward recomputes each chunk's logits and turns them into their gradient in place, so at most one
chunk's logits (and one companion buffer) are alive at any moment, forward or backward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TokenLogProbs(NamedTuple):
    """Per-position results, each ``(b, t)`` float32."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference computation: ``log_softmax(logits / T)`` gathered at ``targets``.

    Shapes: ``logits (b, t, v)``, ``targets (b, t)`` -> ``(b, t)`` float32. Builds the full float32
    logits; use :func:`token_logprobs_from_hidden` for anything large.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    # (n, d) @ (d, v) in the model's dtype, then float32 for the softmax: only this chunk exists in fp32.
    z = F.linear(h, weight, bias).float()
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """Log-probs (and entropies) of ``targets`` for flattened positions, chunk by chunk, both ways.

    Forward keeps only per-position scalars (logsumexp and the mean logit under the softmax); backward
    recomputes one chunk of logits at a time and turns it into the logit gradient in place:

        d logprob_i / d z_j = [j == y_i] - p_j
        d entropy_i / d z_j = -p_j (z_j - E_p[z])

    so at most two ``(chunk, v)`` float32 buffers are alive at once (about 5 with autograd's own graph).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk_size: int, with_entropy: bool):
        n = hidden.shape[0]
        logprobs = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        mean_logit = hidden.new_zeros(n, dtype=torch.float32)
        entropy = hidden.new_zeros(n, dtype=torch.float32)
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            z = _chunk_logits(hidden[sl], weight, bias, temperature)
            lse[sl] = torch.logsumexp(z, dim=-1)
            logprobs[sl] = z.gather(-1, targets[sl, None]).squeeze(-1) - lse[sl]
            if with_entropy:
                # H = logsumexp(z) - E_p[z]
                mean_logit[sl] = (torch.softmax(z, dim=-1) * z).sum(-1)
                entropy[sl] = lse[sl] - mean_logit[sl]
        ctx.save_for_backward(hidden, weight, bias, targets, lse, mean_logit)
        ctx.temperature, ctx.chunk_size, ctx.with_entropy = temperature, chunk_size, with_entropy
        ctx.mark_non_differentiable(lse)
        # an output the loss does not use gets no gradient (None, not zeros): entropy computed only for logging
        # then costs nothing in backward
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, targets, lse, mean_logit = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        use_entropy = ctx.with_entropy and grad_entropy is not None
        if grad_logprobs is None:
            grad_logprobs = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            h = hidden[sl]
            z = _chunk_logits(h, weight, bias, temperature)
            g_lp = grad_logprobs[sl, None].float()
            if use_entropy:
                # grad_z = -p * (g_lp + g_ent * (z - E[z])) + g_lp * onehot(y), built in the buffer of z
                p = z.sub(lse[sl, None]).exp_()
                z.sub_(mean_logit[sl, None]).mul_(grad_entropy[sl, None].float()).add_(g_lp)
                grad_z = z.mul_(p).neg_()
            else:
                # grad_z = -p * g_lp + g_lp * onehot(y); p overwrites z
                grad_z = z.sub_(lse[sl, None]).exp_().mul_(g_lp).neg_()
            grad_z.scatter_add_(-1, targets[sl, None], g_lp)
            if temperature != 1.0:
                grad_z.div_(temperature)
            if grad_h is not None:
                grad_h[sl] = (grad_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w.addmm_(grad_z.T, h.float())
            if grad_b is not None:
                grad_b.add_(grad_z.sum(0))
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def token_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Log-probability of ``targets`` under ``softmax(logit_scale * (hidden @ weight.T + bias) / temperature)``.

    Shapes: ``hidden (b, t, d)`` (the final hidden states, already aligned so that position i predicts
    ``targets[:, i]``), ``weight (v, d)``, ``targets (b, t)``, ``mask (b, t)`` bool.

    Only positions where ``mask`` is True are computed (the LM head is skipped for padding and, in
    SFT, for prompt tokens); the others are returned as 0. Positions are processed ``chunk_size`` at a
    time, so peak memory is about ``chunk_size * v`` floats regardless of batch size and length.
    Gradients flow to ``hidden`` (and ``weight``/``bias`` if they require grad).

    ``logit_scale`` is the constant some model families multiply their head's output by (Granite divides by
    ``logits_scaling``, Cohere multiplies by ``logit_scale``: ``models.loading.logit_scale``); it folds into
    the temperature, ``T / logit_scale``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, d = hidden.shape
    flat_hidden = hidden.reshape(b * t, d)
    flat_targets = targets.reshape(b * t)
    if mask is not None:
        index = mask.reshape(b * t).nonzero().squeeze(-1)
        flat_hidden = flat_hidden.index_select(0, index)
        flat_targets = flat_targets.index_select(0, index)

    logprobs, entropy = _ChunkedTokenLogProbs.apply(
        flat_hidden, weight, bias, flat_targets, float(temperature) / float(logit_scale), int(chunk_size), with_entropy
    )

    def assemble(values: torch.Tensor) -> torch.Tensor:
        if mask is None:
            return values.view(b, t)
        out = values.new_zeros(b * t)
        return out.index_copy(0, index, values).view(b, t)

    return TokenLogProbs(assemble(logprobs), assemble(entropy) if with_entropy else None)
