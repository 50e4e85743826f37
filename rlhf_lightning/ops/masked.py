"""Statistics over the valid entries of a tensor.

Masks are boolean with ``True`` marking a valid entry (a real token). Every function here can
all-reduce its sums across data-parallel ranks, so that statistics such as advantage whitening see
the whole global batch rather than one rank's shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce_sum(t: torch.Tensor, all_reduce: bool) -> torch.Tensor:
    if all_reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def masked_sum(values: torch.Tensor, mask: torch.Tensor, all_reduce: bool = False) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is True. Shapes: ``values (*)``, ``mask (*)`` -> scalar."""
    return _all_reduce_sum((values * mask).sum(), all_reduce)


def world_size() -> int:
    """Number of data-parallel ranks: that of the initialised ``torch.distributed`` group, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def masked_count(mask: torch.Tensor, all_reduce: bool = False) -> torch.Tensor:
    """Number of True entries of ``mask (*)`` (summed over every rank with ``all_reduce``). 0-d long."""
    return _all_reduce_sum(mask.sum(), all_reduce)


def global_mean_weight(part: torch.Tensor, total: torch.Tensor | int, ranks: int = 1) -> torch.Tensor:
    """Weight of a part's masked mean in the masked mean over a batch split across ``ranks`` data-parallel
    ranks whose gradients are averaged (DDP's all-reduce sums them and divides by the number of ranks).

    ``part (*)`` bool: the valid entries of one part (a micro-batch); ``total``: the valid entries of the whole
    batch over every rank (:func:`masked_count` with ``all_reduce``; at least 1 is used). With ``n`` entries in
    the part, ``w = ranks * n / total``: ``w * masked_mean(x, part)`` is ``ranks * sum_part(x) / total``, and
    summing that over a rank's parts, then averaging over the ranks, gives ``sum(x) / total``: the mean over
    every valid entry of every rank, each entry weighing the same however the batch was sharded. With one
    rank it is ``n / total``, the part's share of the batch. 0-d float.
    """
    total = torch.as_tensor(total, device=part.device).clamp(min=1)
    return part.sum() * ranks / total


def masked_mean(values: torch.Tensor, mask: torch.Tensor, all_reduce: bool = False) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is True (0 when nothing is valid)."""
    stats = _all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum().to(values.dtype)]), all_reduce)
    return stats[0] / stats[1].clamp(min=1)


def masked_var(
    values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, all_reduce: bool = False
) -> torch.Tensor:
    """Variance of ``values`` over the entries where ``mask`` is True.

    Computed as ``E[(x - mean)^2]`` around the (global) mean rather than ``E[x^2] - mean^2``, which loses
    precision when the mean is large. ``unbiased`` applies Bessel's correction ``n / (n - 1)``.
    """
    mean = masked_mean(values, mask, all_reduce)
    centered = (values - mean) * mask
    stats = _all_reduce_sum(torch.stack([centered.pow(2).sum(), mask.sum().to(values.dtype)]), all_reduce)
    sq_sum, count = stats[0], stats[1]
    if unbiased:
        if count < 2:
            raise ValueError(f"unbiased variance needs at least 2 valid entries, got {int(count)}")
        return sq_sum / (count - 1)
    return sq_sum / count.clamp(min=1)


def standard_error(values: torch.Tensor, mask: torch.Tensor, all_reduce: bool = False) -> torch.Tensor:
    """Standard error of the mean of ``values`` over the entries where ``mask`` is True: the sample (Bessel)
    standard deviation over ``sqrt(n)``; ``inf`` with fewer than 2 entries (over all ranks), where the mean
    says nothing of its own noise."""
    count = _all_reduce_sum(mask.sum().to(values.dtype), all_reduce)
    if count < 2:
        return values.new_tensor(float("inf"))
    return (masked_var(values, mask, unbiased=True, all_reduce=all_reduce) / count).sqrt()


def whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce: bool = False
) -> torch.Tensor:
    """Normalise ``values`` to zero mean and unit variance over the valid entries.

    ``shift_mean=False`` only rescales, keeping the mean (used for rewards, whose sign carries meaning).
    Invalid entries are returned as 0 so that they cannot leak into later sums. With fewer than 2 valid
    entries (over all ranks) there is no spread to divide by: the values are returned unchanged, so a batch
    of one one-token response still trains on its own advantage.
    """
    count = _all_reduce_sum(mask.sum().to(values.dtype), all_reduce)
    if count < 2:
        return values * mask
    mean = masked_mean(values, mask, all_reduce)
    var = masked_var(values, mask, unbiased=True, all_reduce=all_reduce)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
