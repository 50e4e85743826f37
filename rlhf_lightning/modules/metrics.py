"""torchmetrics metrics that need only per-token log-probs, never full logits."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from rlhf_lightning.ops import pair_weights


class TokenNLL(Metric):
    """Mean negative log-likelihood per target token over everything seen; ``perplexity`` is its exp.

    Sums are kept (in float64) rather than per-batch means, so batches of different sizes and ranks with
    different numbers of tokens weigh each token equally.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logprobs: torch.Tensor, mask: torch.Tensor) -> None:
        self.nll_sum -= (logprobs.double() * mask).sum()
        self.tokens += mask.sum()

    def compute(self) -> torch.Tensor:
        return (self.nll_sum / self.tokens.clamp(min=1)).float()


class WeightedMean(Metric):
    """Weighted mean ``sum(w * x) / sum(w)`` over everything seen (0 before anything has weight).

    The two sums are kept (in float64) and summed across ranks, so the mean over ranks holding different numbers
    of rows is the mean over all their rows. The reward model's ``val/loss``: each batch's loss (a mean over its
    prompts) weighted by its number of prompts.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("weighted_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor | float) -> None:
        """``value (*)`` and its ``weight``, of the same shape or a scalar for every entry."""
        weight = torch.broadcast_to(torch.as_tensor(weight, dtype=torch.float64, device=value.device), value.shape)
        self.weighted_sum += (value.detach().double() * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return (self.weighted_sum / self.weight.clamp(min=1e-12)).float()


class PreferenceMetrics(Metric):
    """Pairwise accuracy, mean margin, and mean/std of the preferred and dispreferred scores.

    Every prompt weighs the same: the pairs of a K-way ranking share their prompt's weight, as in the loss.
    A tie (equal scores) counts as half right.
    """

    full_state_update = False
    _names = ("weight", "correct", "margin", "better", "better_sq", "worse", "worse_sq")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self._names:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, better: torch.Tensor, worse: torch.Tensor, group: torch.Tensor) -> None:
        w = pair_weights(group).double() * (torch.bincount(group) > 0).sum()  # each prompt sums to 1
        sb, sw = scores[better].detach().double(), scores[worse].detach().double()
        diff = sb - sw
        self.weight += w.sum()
        self.correct += (w * ((diff > 0).double() + 0.5 * (diff == 0).double())).sum()
        self.margin += (w * diff).sum()
        self.better += (w * sb).sum()
        self.better_sq += (w * sb * sb).sum()
        self.worse += (w * sw).sum()
        self.worse_sq += (w * sw * sw).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.weight.clamp(min=1e-12)
        mean_b, mean_w = self.better / n, self.worse / n
        return {
            "accuracy": (self.correct / n).float(),
            "margin": (self.margin / n).float(),
            "chosen_mean": mean_b.float(),
            "chosen_std": (self.better_sq / n - mean_b**2).clamp(min=0).sqrt().float(),
            "rejected_mean": mean_w.float(),
            "rejected_std": (self.worse_sq / n - mean_w**2).clamp(min=0).sqrt().float(),
        }
