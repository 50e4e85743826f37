"""Pure torch functions: the math of every stage, free of models and frameworks."""

from rlhf_lightning.ops.logprobs import TokenLogProbs, logprobs_from_logits, token_logprobs_from_hidden
from rlhf_lightning.ops.masked import masked_mean, masked_sum, masked_var, whiten

__all__ = [
    "TokenLogProbs",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "token_logprobs_from_hidden",
    "whiten",
]
