import pytest
import torch

from rlhf_lightning.modules.optim import OptimConfig, build_optimizer, build_scheduler, lr_multiplier


def test_warmup_then_cosine_to_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_multiplier(s, 104, cfg) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_multiplier(4, 104, cfg) == pytest.approx(1.0)
    assert lr_multiplier(54, 104, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi/2) = 0
    assert lr_multiplier(104, 104, cfg) == pytest.approx(0.1)


def test_linear_and_constant_and_warmup_ratio():
    assert lr_multiplier(15, 20, OptimConfig(warmup_steps=0, warmup_ratio=0.0, schedule="linear")) == pytest.approx(
        0.25
    )
    assert lr_multiplier(7, 20, OptimConfig(warmup_ratio=0.0, schedule="constant")) == 1.0
    # 10% of 100 steps = 10 warmup steps
    assert lr_multiplier(4, 100, OptimConfig(warmup_ratio=0.1)) == pytest.approx(5 / 11)


def test_scheduler_drives_the_optimizer_learning_rate():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], OptimConfig(lr=0.5, warmup_steps=1, schedule="linear"))
    sched = build_scheduler(opt, 3, OptimConfig(lr=0.5, warmup_steps=1, schedule="linear"))
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.25, 0.5, 0.25])


def test_named_groups_get_their_own_learning_rate_and_the_schedule_scales_both():
    policy, value, frozen = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    frozen.requires_grad_(False)
    cfg = OptimConfig(lr=0.4, warmup_steps=1, schedule="linear")
    opt = build_optimizer({"policy": [policy, frozen], "value": [value]}, cfg, {"value": 0.25})
    assert [(g["name"], g["params"]) for g in opt.param_groups] == [("policy", [policy]), ("value", [value])]
    sched = build_scheduler(opt, 3, cfg)
    seen = []
    for _ in range(3):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [lr for step in seen for lr in step] == pytest.approx([0.2, 0.05, 0.4, 0.1, 0.2, 0.05])


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw", "paged_adamw_8bit"])
def test_bitsandbytes_optimizers_are_selectable(name):
    import bitsandbytes as bnb

    p = torch.nn.Parameter(torch.randn(64, 64))
    opt = build_optimizer([p], OptimConfig(optimizer=name, lr=1e-2))
    assert isinstance(opt, bnb.optim.optimizer.Optimizer8bit)
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    opt.step()
    assert not torch.equal(before, p)


def test_frozen_parameters_are_left_out_and_bad_settings_explained():
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([frozen], OptimConfig())
    with pytest.raises(ValueError, match="optim.lr"):
        OptimConfig(lr=0)
