"""Two PPO options change what they say and nothing else: ``ppo.value_lr_scale`` (and its deprecated alias
``ppo.vf_coef``) the value function's step, ``rewards.kl_penalty: loss`` where the KL penalty enters."""

import warnings

import pytest
import torch

from rlhf_lightning.models import GenerationConfig, LoraConfig, ModelConfig
from rlhf_lightning.models.adapters import active, response_logprobs
from rlhf_lightning.modules import PPOModule
from rlhf_lightning.modules.optim import OptimConfig, build_scheduler
from rlhf_lightning.modules.ppo import PPOConfig, PPOEvalConfig, RewardShaping
from rlhf_lightning.modules.ppo.update import clip_gradients
from rlhf_lightning.ops import kl_penalty_loss, left_pad

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def module(tiny_llama):
    torch.manual_seed(0)
    m = PPOModule(
        model=ModelConfig(name_or_path=tiny_llama), lora=LoraConfig(r=8),
        optim=OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="linear"),
        reward_function="tests.modules.test_ppo:vowel_reward",
        rollout=GenerationConfig(max_new_tokens=10, temperature=TEMPERATURE),
        ppo=PPOConfig(ppo_epochs=1), evaluation=PPOEvalConfig(at_end=False, samples_every_n_iterations=0),
    )  # fmt: skip
    m.configure_model()
    m.make_optimizer()  # splits the trainable weights into m._groups: policy and value
    with torch.no_grad():  # move the policy off the reference (a fresh adapter starts equal to it): KL > 0
        for p in m._groups["policy"]:
            p.add_(0.05 * torch.randn_like(p))
    prompts = [[5, 6, 7, 8, 9, 10, 11][: (i % 7) + 1] for i in range(6)]
    ids, mask = left_pad(prompts, m.tokenizer.pad_token_id)
    torch.manual_seed(1)
    m.rollout_batch = m.rollout(ids, mask)
    return m


@pytest.fixture
def fresh(module):
    """Every test starts from the same trainable weights, options and coefficient."""
    params = [p for p in module.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    ppo, shaping, controller = module.ppo, module.shaping, module.kl_controller
    yield module
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    module.ppo, module.shaping, module.kl_controller = ppo, shaping, controller


def update(module, optimizer, experience):
    """One PPO update through the module's own wiring (:meth:`PPOModule.update`), with ``optimizer`` and the
    policy's and value's gradients clipped as a training run does. Returns the stats and each group's weights."""
    scheduler = build_scheduler(optimizer, 10, module.optim_config)
    module.optimizers, module.lr_schedulers = lambda: optimizer, lambda: scheduler
    module.manual_backward = lambda loss: loss.backward()

    def clip(*_):
        module._grad_norms.append(clip_gradients(module._groups, module.ppo.max_grad_norm, torch.device("cpu")))

    hook = optimizer.register_step_pre_hook(clip)
    torch.manual_seed(2)
    try:
        stats = module.update(experience)
    finally:
        hook.remove()
        for name in ("optimizers", "lr_schedulers", "manual_backward"):
            delattr(module, name)
    return stats, {group: [p.detach().clone() for p in ps] for group, ps in module._groups.items()}


def restore(module, weights):
    with torch.no_grad():
        for group, ps in module._groups.items():
            for p, w in zip(ps, weights[group]):
                p.copy_(w)


# --- ppo.value_lr_scale ---------------------------------------------------------------------------------------------


def test_value_lr_scale_changes_the_value_step_and_nothing_else(fresh):
    module = fresh
    start = {group: [p.detach().clone() for p in ps] for group, ps in module._groups.items()}
    experience = module.experience_source(module.rollout_batch, in_first_pass=False)[0]
    after = {}
    for scale in (1.0, 0.5):
        module.ppo = PPOConfig(ppo_epochs=1, value_lr_scale=scale)
        optimizer = module.make_optimizer()
        assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("policy", 1e-3), ("value", 1e-3 * scale)]
        _, after[scale] = update(module, optimizer, experience)
        restore(module, start)
    for a, b in zip(after[1.0]["policy"], after[0.5]["policy"]):
        assert torch.equal(a, b)  # bitwise: the policy's update does not see the value's learning rate
    full = torch.cat([(a - s).flatten() for a, s in zip(after[1.0]["value"], start["value"])])
    half = torch.cat([(a - s).flatten() for a, s in zip(after[0.5]["value"], start["value"])])
    assert full.abs().max() > 1e-4  # the value function moved
    # Adam's first step is lr * g / (|g| + eps): half the learning rate, half the step, element by element
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-4, atol=1e-9)


def test_vf_coef_is_a_deprecated_alias_of_value_lr_scale():
    with pytest.warns(FutureWarning, match="ppo.vf_coef is deprecated.*value_lr_scale"):
        cfg = PPOConfig(vf_coef=0.5)
    assert cfg.value_lr_scale == 0.5 and cfg.vf_coef is None
    assert PPOConfig().value_lr_scale == 1.0 and PPOConfig().vf_coef is None  # no warning without it
    with pytest.raises(ValueError, match="ppo.value_lr_scale alone"):
        PPOConfig(vf_coef=0.5, value_lr_scale=2.0)
    with pytest.raises(ValueError, match="ppo.value_lr_scale must be > 0"):
        PPOConfig(value_lr_scale=0.0)


# --- rewards.kl_penalty ---------------------------------------------------------------------------------------------


def experience_with(module, shaping: RewardShaping):
    module.shaping, module.kl_controller = shaping, shaping.kl_controller()
    return module.experience_source(module.rollout_batch, in_first_pass=False)[0]


def test_kl_penalty_loss_moves_the_penalty_from_the_rewards_to_the_policy_loss(fresh):
    module, beta, lr = fresh, 0.5, 0.1
    start = {group: [p.detach().clone() for p in ps] for group, ps in module._groups.items()}
    module.ppo = PPOConfig(ppo_epochs=1, max_grad_norm=None)
    no_kl = experience_with(module, RewardShaping(kl_coef=0.0))
    in_reward = experience_with(module, RewardShaping(kl_coef=beta))
    in_loss = experience_with(module, RewardShaping(kl_coef=beta, kl_penalty="loss", kl_estimator="k3"))
    # the rewards: with kl_penalty loss they hold the score alone, exactly as with beta 0
    assert torch.equal(in_loss.advantages, no_kl.advantages) and torch.equal(in_loss.returns, no_kl.returns)
    assert not torch.allclose(in_reward.advantages, no_kl.advantages)  # the default: the KL is in the rewards

    def sgd_update(experience, shaping):
        module.shaping, module.kl_controller = shaping, shaping.kl_controller()
        optimizer = torch.optim.SGD([p for ps in module._groups.values() for p in ps], lr=lr)
        stats, after = update(module, optimizer, experience)
        restore(module, start)
        return stats, after

    base_stats, base = sgd_update(no_kl, RewardShaping(kl_coef=0.0))
    reward_stats, _ = sgd_update(in_reward, RewardShaping(kl_coef=beta))
    loss_stats, with_loss = sgd_update(in_loss, RewardShaping(kl_coef=beta, kl_penalty="loss", kl_estimator="k3"))
    assert base_stats.kl_loss is None and reward_stats.kl_loss is None and "loss/kl_avg" not in reward_stats.tags()

    # by hand: the gradient of the ratio-weighted k3 at the start of the update (ratio 1)
    policy = module.roles["policy"]
    mask = in_loss.mask
    with active(policy):
        out = response_logprobs(policy, in_loss.sequences, in_loss.attention_mask, mask, TEMPERATURE)
    kl_loss = kl_penalty_loss(out.logprobs, in_loss.logprobs, in_loss.ref_logprobs, mask, "k3")
    grads = torch.autograd.grad(kl_loss, module._groups["policy"], allow_unused=True)
    k3 = (torch.expm1(in_loss.ref_logprobs - in_loss.logprobs) - (in_loss.ref_logprobs - in_loss.logprobs))[mask]
    assert loss_stats.kl_loss.item() == pytest.approx(k3.mean().item(), rel=1e-4) and k3.mean() > 1e-3
    # SGD: the loss placement's step is the beta-0 step plus -lr * beta * that gradient, for every policy weight
    moved = 0.0
    for b, w, g in zip(base["policy"], with_loss["policy"], grads):
        expected = -lr * beta * (g if g is not None else torch.zeros_like(b))
        torch.testing.assert_close(w - b, expected, rtol=1e-3, atol=1e-7)
        moved = max(moved, expected.abs().max().item())
    assert moved > 1e-5
    for b, w in zip(base["value"], with_loss["value"]):
        assert torch.equal(b, w)  # the value function learns the same returns either way


def test_k3_in_the_rewards_warns_that_its_gradient_is_biased():
    with pytest.warns(UserWarning, match="kl_estimator: k3 in the rewards gives a biased gradient"):
        RewardShaping(kl_estimator="k3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RewardShaping(kl_estimator="k3", kl_penalty="loss")
        RewardShaping(kl_estimator="k1")


def test_a_checkpoint_with_one_optimizer_group_resumes_with_each_parameters_state(fresh):
    """A run checkpointed before ``value_lr_scale`` existed had one AdamW group over every trainable weight; its
    moments must reach the same weights in today's policy and value groups."""
    from rlhf_lightning.modules.optim import build_optimizer

    module = fresh
    module.ppo = PPOConfig(ppo_epochs=1, value_lr_scale=0.5)
    trainable = [p for p in module.parameters() if p.requires_grad]
    old = build_optimizer(trainable, module.optim_config)  # the former layout: one group, parameters() order
    old_scheduler = build_scheduler(old, 10, module.optim_config)
    for p in trainable:
        p.grad = torch.randn_like(p)
    old.step()
    old_scheduler.step()
    checkpoint = {"optimizer_states": [old.state_dict()], "lr_schedulers": [old_scheduler.state_dict()]}
    module.split_single_group_state(checkpoint)
    new = module.make_optimizer()  # as configure_optimizers builds them, then Lightning loads their states
    new_scheduler = build_scheduler(new, 10, module.optim_config)
    new.load_state_dict(checkpoint["optimizer_states"][0])
    new_scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
    for p in trainable:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(new.state[p][key], old.state[p][key]), key
    policy, value = new.param_groups
    assert (policy["name"], value["name"]) == ("policy", "value")
    assert policy["lr"] == old.param_groups[0]["lr"] and value["lr"] == 0.5 * policy["lr"]
    assert new_scheduler.base_lrs == [module.optim_config.lr, 0.5 * module.optim_config.lr]
    for p in trainable:
        p.grad = None
    assert (
        module.split_single_group_state(checkpoint) is None
        and len(checkpoint["optimizer_states"][0]["param_groups"]) == 2
    )
