"""The PPO iteration's shortcuts change no number: the experience taken from the update's first pass, and
micro-batches sorted by length and trimmed of padding, give the update the full passes give."""

import dataclasses

import pytest
import torch

from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
from rlhf_lightning.modules import PPOModule
from rlhf_lightning.modules.ppo import PPOConfig, PPOEvalConfig
from rlhf_lightning.modules.ppo.roles import ADAPTERS
from rlhf_lightning.modules.ppo.update import gradient_groups, ppo_update
from rlhf_lightning.ops import left_pad


@pytest.fixture(scope="module")
def module(tiny_llama):
    torch.manual_seed(0)
    m = PPOModule(
        model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=8),
        reward_function="tests.modules.test_ppo:vowel_reward", rollout=GenerationConfig(max_new_tokens=10),
        ppo=PPOConfig(ppo_epochs=2), evaluation=PPOEvalConfig(at_end=False, samples_every_n_iterations=0),
    )  # fmt: skip
    m.configure_model()
    stop = m.tokenizer.convert_tokens_to_ids("a")  # a common character: responses of many lengths
    m.stop_ids = [*m.stop_ids, stop]
    prompts = [[5, 6, 7, 8, 9, 10, 11][: (i % 7) + 1] for i in range(8)]  # prompts of 1 to 7 tokens
    ids, mask = left_pad(prompts, m.tokenizer.pad_token_id)
    torch.manual_seed(1)
    m.rollout_batch = m.rollout(ids, mask)
    lengths = m.rollout_batch.mask.sum(-1)
    assert len(set(lengths.tolist())) > 2, lengths  # the trimming and sorting below have something to do
    return m


def run_update(module, ppo: PPOConfig, fused: bool):
    """The trainable weights after one update from the same start, and the update's and rollout's statistics."""
    module.ppo = ppo
    params = [p for p in module.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    groups = gradient_groups(module.named_parameters(), ADAPTERS["policy"])
    # SGD feels the loss scale Adam ignores: the value's smaller rate keeps its steps as small as the policy's
    optimizer = torch.optim.SGD([{"params": groups["policy"], "lr": 0.5}, {"params": groups["value"], "lr": 0.05}])

    def step():
        optimizer.step()
        optimizer.zero_grad()
        return []

    source, build, built = module.experience_source(module.rollout_batch, in_first_pass=fused)
    torch.manual_seed(2)
    stats = ppo_update(source, module.roles["policy"], module.roles["value"], ppo, 0.7, lambda loss: loss.backward(),
                       step, build=build)  # fmt: skip
    after = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    return after, stats, built[1]


def test_the_experience_from_the_first_training_pass_is_the_scoring_passes_experience(module):
    ppo = PPOConfig(ppo_epochs=2, num_minibatches=1)
    assert module.builds_in_first_pass(8)
    full, full_stats, full_rollout = run_update(module, ppo, fused=False)
    fused, fused_stats, fused_rollout = run_update(module, ppo, fused=True)
    for a, b in zip(full, fused):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert fused_stats.first_ratio.item() == 1.0 and fused_stats.first_approxkl.item() == 0.0
    assert fused_rollout.kl.item() == 0.0 == full_rollout.kl.item()  # policy == reference before any update
    for name in ("scores", "values_mean", "entropy", "response_length"):
        torch.testing.assert_close(getattr(fused_rollout, name), getattr(full_rollout, name), atol=1e-5, rtol=1e-5)
    assert fused_stats.entropy is not None  # logged from the first pass; later passes leave the graph alone
    torch.testing.assert_close(fused_stats.policy_loss, full_stats.policy_loss, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("micro_batch_size", [1, 3])
def test_sorted_trimmed_micro_batches_give_the_whole_batchs_update(module, micro_batch_size):
    whole, whole_stats, _ = run_update(module, PPOConfig(ppo_epochs=2, num_minibatches=2), fused=False)
    ppo = dataclasses.replace(PPOConfig(ppo_epochs=2, num_minibatches=2), micro_batch_size=micro_batch_size)
    assert not module.builds_in_first_pass(8)
    micro, micro_stats, _ = run_update(module, ppo, fused=False)
    for a, b in zip(whole, micro):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert micro_stats.entropy is None  # entropy_coef 0: not computed in the update


def test_the_first_pass_needs_one_forward_pass(module):
    with pytest.raises(ValueError, match="one minibatch of one micro-batch"):
        ppo_update(module.rollout_batch, module.roles["policy"], module.roles["value"], PPOConfig(num_minibatches=2),
                   0.7, lambda loss: None, lambda: [], build=lambda lp, ent: None)  # fmt: skip
