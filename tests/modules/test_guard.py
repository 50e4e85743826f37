"""Non-finite steps are never applied: the guard's decisions by hand, then every stage through the CLI."""

import math

import lightning as L
import pytest
import torch

from rlhf_lightning.models.score_function import ScoreError, checked_scores
from rlhf_lightning.modules import RewardModule, SFTModule
from rlhf_lightning.modules.guard import NonFiniteGuard, NonFiniteStepsError
from tests.helpers import run_cli, scalars, write_jsonl
from tests.modules.test_sft import ROWS, sft_args


def step(param: torch.nn.Parameter, grad: float, guard: NonFiniteGuard, optimizer, loss: float = 1.0) -> bool:
    param.grad = torch.full_like(param, grad)
    finite = guard.check([param], guard.is_finite([param], [torch.tensor(loss)]), step=0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def test_a_non_finite_step_leaves_weights_and_optimizer_state_untouched():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    guard = NonFiniteGuard(max_in_a_row=2)
    assert step(param, 1.0, guard, optimizer)
    after_one = param.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[param].items()}
    assert not step(param, math.nan, guard, optimizer)
    assert not step(param, 1.0, guard, optimizer, loss=math.inf)  # finite gradient, infinite loss
    assert torch.equal(param, after_one)  # AdamW's momentum would have moved it on a zero gradient
    assert all(torch.equal(optimizer.state[param][k], v) for k, v in state.items())
    assert (guard.total, guard.in_a_row) == (2, 2)
    assert step(param, 1.0, guard, optimizer) and guard.in_a_row == 0  # a good step resets the run
    assert not torch.equal(param, after_one)


def test_too_many_non_finite_steps_in_a_row_stop_with_a_message():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    guard = NonFiniteGuard(max_in_a_row=1)
    assert not step(param, math.inf, guard, optimizer)
    with pytest.raises(NonFiniteStepsError, match=r"2 optimizer step\(s\) in a row.*optim.max_nonfinite_steps"):
        step(param, math.nan, guard, optimizer)
    restored = NonFiniteGuard(max_in_a_row=1)
    restored.load_state_dict(guard.state_dict())
    assert (restored.total, restored.in_a_row) == (2, 2)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([1.0, None], r"returned None \(NoneType\) for response 1; expected a number"),
        ([math.nan, 1.0], r"returned nan for response 0; scores must be finite"),
        ([1.0, "good"], r"returned 'good' \(str\) for response 1"),
        ([1.0], r"returned 1 scores for 2 responses"),
        ([True, 1.0], r"returned True \(bool\) for response 0"),
        ([1e39, 1.0], r"returned 1e\+39 for response 0, beyond float32's range"),
        ([1.0, 10**400], r"returned 1000.* for response 1; scores must be finite"),
        (3.0, r"returned float; expected a list of 2 numbers"),
    ],
)
def test_scores_from_user_code_are_checked(values, problem):
    with pytest.raises(ScoreError, match=r"reward_function my:rule " + problem):
        checked_scores(values, 2, "reward_function my:rule")
    assert checked_scores([1, 2.5], 2, "f").tolist() == [1.0, 2.5]
    assert checked_scores(torch.tensor([1.0, 2.0]), 2, "f").tolist() == [1.0, 2.0]


# --- every stage, through the CLI ---------------------------------------------------------------------------
class PoisonedSFT(SFTModule):
    """SFT whose loss is NaN at the optimizer steps listed in ``poison_steps`` (all steps when empty)."""

    def __init__(self, *args, poison_steps: list[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poison_steps = poison_steps

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        poisoned = self.poison_steps is None or self.trainer.global_step in self.poison_steps
        return loss * math.nan if poisoned else loss


class PoisonedReward(RewardModule):
    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * (math.nan if self.trainer.global_step == 1 else 1.0)


class WeightsPerStep(L.Callback):
    """The trainable weights after each optimizer step."""

    def __init__(self) -> None:
        self.weights: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]
        self.weights[trainer.global_step] = params


def callback_of(cli, kind):
    return next(c for c in cli.trainer.callbacks if isinstance(c, kind))


def test_sft_skips_a_nan_step_counts_it_and_trains_on(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", ROWS)
    args = sft_args(
        tiny_llama, data, tmp_path / "run", 5, "--trainer.callbacks+=tests.modules.test_guard.WeightsPerStep"
    )
    args[1] = "--model=tests.modules.test_guard.PoisonedSFT"
    cli = run_cli([*args, "--model.poison_steps=[2]"])
    weights = callback_of(cli, WeightsPerStep).weights
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[3]))  # the NaN step changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(weights[3], weights[4]))  # the next one did
    assert all(torch.isfinite(w).all() for w in weights[5])
    assert max(scalars(tmp_path / "run", "train/nonfinite_steps").values()) == 1.0
    adam = cli.trainer.optimizers[0]
    assert {int(s["step"]) for s in adam.state.values()} == {4}  # 5 steps, one skipped
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_sft_stops_after_too_many_nan_steps_without_a_final_folder(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", ROWS)
    args = sft_args(tiny_llama, data, tmp_path / "run", 8, "--model.optim.max_nonfinite_steps=2")
    args[1] = "--model=tests.modules.test_guard.PoisonedSFT"
    with pytest.raises(NonFiniteStepsError, match=r"3 optimizer step\(s\) in a row, the last at step 2"):
        run_cli(args)
    assert not (tmp_path / "run" / "final").exists()


def test_reward_stage_skips_a_nan_step(tiny_llama, tmp_path):
    from tests.modules.test_reward import reward_args, z_rule_rows

    train = write_jsonl(tmp_path / "train.jsonl", z_rule_rows(32, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", z_rule_rows(8, seed=1))
    args = reward_args(
        tiny_llama, train, val, tmp_path / "run", "--trainer.max_steps=3", "--trainer.val_check_interval=3"
    )
    args[1] = "--model=tests.modules.test_guard.PoisonedReward"
    run_cli(args)
    assert max(scalars(tmp_path / "run", "train/nonfinite_steps").values()) == 1.0
    assert (tmp_path / "run" / "final" / "score_head.safetensors").exists()
