"""PPO's health warnings: each names the problem; none for a healthy iteration or a shorter answer that was
not bought with a higher score."""

import warnings

import pytest

from rlhf_lightning.callbacks import PPOHealthCheck

HEALTHY = {
    "objective/kl": 0.5, "policy/first_ratio": 1.0, "val/ratio": 1.01, "rollout/ended_fraction": 0.9,
    "objective/raw_scores": 0.2, "rollout/response_length": 20.0, "rollout/distinct_2": 0.8,
    "rollout/empty_fraction": 0.0,
}  # fmt: skip


def checked(stats_list: list[dict], health: PPOHealthCheck | None = None) -> PPOHealthCheck:
    health = health or PPOHealthCheck()
    for i, stats in enumerate(stats_list):
        health.check(stats, iteration=i, clip_eps=0.2, max_new_tokens=48, stop_tokens=["<|im_end|>"])
    return health


def test_each_warning_names_the_problem():
    health = checked([HEALTHY])  # the first iteration: what later ones are compared with
    rising = HEALTHY | {"objective/raw_scores": 1.5}
    with pytest.warns(UserWarning) as caught:
        checked(
            [
                HEALTHY | {"objective/kl": -0.5},
                HEALTHY | {"policy/first_ratio": 1.05},
                HEALTHY | {"val/ratio": 1.5},
                HEALTHY | {"rollout/ended_fraction": 0.2},
                rising | {"rollout/response_length": 6.0, "rollout/empty_fraction": 0.3},
            ],
            health,
        )
    messages = " ".join(str(w.message) for w in caught)
    hacking = "score rose (0.20 -> 1.50) while the answers collapsed (length 20.00 -> 6.00, 30% empty"
    for expected in ("objective/kl is negative", "first minibatch is 1.0500", "drifted to 1.500", hacking):
        assert expected in messages
    assert "only 20% of responses ended with a stop token ['<|im_end|>'] within 48 tokens" in messages


def test_no_warning_without_a_problem():
    rising = HEALTHY | {"objective/raw_scores": 1.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked([HEALTHY, rising | {"rollout/distinct_2": 0.5}])  # the score rose, the answers held up
        checked([HEALTHY, HEALTHY | {"rollout/response_length": 6.0}])  # shorter, but not for a higher score
        checked([HEALTHY, HEALTHY, HEALTHY])


def test_a_negative_kl_warns_only_beyond_its_sampling_noise():
    # four responses whose KL scatter widely: a mean of -0.12 is 1.5 standard errors below 0, noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked([HEALTHY | {"objective/kl": -0.12, "objective/kl_stderr": 0.08}])
        checked([HEALTHY | {"objective/kl": -0.3, "objective/kl_stderr": float("inf")}])  # one response
    with pytest.warns(UserWarning, match=r"objective/kl is negative \(-0\.300, standard error 0\.050\)"):
        checked([HEALTHY | {"objective/kl": -0.3, "objective/kl_stderr": 0.05}])


def test_a_warning_repeats_only_every_n_iterations():
    with pytest.warns(UserWarning) as caught:
        checked([HEALTHY | {"objective/kl": -0.5}] * 12)
    assert sum("objective/kl is negative" in str(w.message) for w in caught) == 2  # iterations 0 and 10


def test_the_first_iterations_figures_survive_a_resume():
    health = checked([HEALTHY])
    resumed = PPOHealthCheck()
    resumed.load_state_dict(health.state_dict())
    with pytest.warns(UserWarning, match="score rose"):
        checked([HEALTHY | {"objective/raw_scores": 1.5, "rollout/response_length": 6.0}], resumed)
    legacy = PPOHealthCheck()  # a checkpoint written before the check was a callback kept them with PPO's state
    legacy.on_load_checkpoint(None, None, {"ppo": {"first_rollout": dict(HEALTHY)}})
    assert legacy.first == {k: HEALTHY[k] for k in legacy.first}
