"""Pure torch functions: the math of every stage, free of models and frameworks."""

from rlhf_lightning.ops.diversity import content_mask, distinct_n, empty_fraction, empty_responses, pearson
from rlhf_lightning.ops.logprobs import TokenLogProbs, logprobs_from_logits, token_logprobs_from_hidden
from rlhf_lightning.ops.masked import masked_mean, masked_sum, masked_var, standard_error, whiten
from rlhf_lightning.ops.padding import (
    SharedPrefixBatch,
    left_pad,
    nonpad_columns,
    pack_shared_prefix,
    right_pad,
    shared_prefix_attention_mask,
)
from rlhf_lightning.ops.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyLoss,
    TokenRewards,
    gae,
    kl_penalty_loss,
    kl_per_token,
    penalize_unfinished,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
    truncate_after_stop,
)
from rlhf_lightning.ops.preference import PreferenceLoss, last_token_index, pair_weights, preference_loss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PolicyLoss",
    "TokenRewards",
    "content_mask",
    "distinct_n",
    "empty_fraction",
    "empty_responses",
    "pearson",
    "gae",
    "kl_penalty_loss",
    "kl_per_token",
    "penalize_unfinished",
    "ppo_policy_loss",
    "ppo_value_loss",
    "token_rewards",
    "truncate_after_stop",
    "PreferenceLoss",
    "TokenLogProbs",
    "last_token_index",
    "left_pad",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "standard_error",
    "pair_weights",
    "preference_loss",
    "right_pad",
    "nonpad_columns",
    "pack_shared_prefix",
    "shared_prefix_attention_mask",
    "SharedPrefixBatch",
    "token_logprobs_from_hidden",
    "whiten",
]
