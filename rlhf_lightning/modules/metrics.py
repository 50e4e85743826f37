"""torchmetrics metrics that need only per-token log-probs, never full logits."""

from __future__ import annotations

import torch
from torchmetrics import Metric


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
