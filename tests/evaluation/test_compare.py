"""The comparison of two policies: win rates and means by hand, and common random numbers."""

from rlhf_lightning.evaluation.compare import summarize, win


def test_win_counts_ties_as_half_and_summarize_means_by_hand():
    assert [win(2.0, 1.0), win(1.0, 1.0), win(0.0, 1.0)] == [1.0, 0.5, 0.0]
    records = [
        {"policy_score": 2.0, "baseline_score": 1.0, "policy_kl": 0.5, "policy_length": 4, "baseline_length": 6,
         "policy_ended": True, "baseline_ended": True, "policy_eos_penalty": 0.0, "baseline_eos_penalty": 0.0,
         "policy_empty": False, "baseline_empty": False, "policy_gold": 1.0, "baseline_gold": 1.0},
        {"policy_score": 0.0, "baseline_score": 3.0, "policy_kl": 1.5, "policy_length": 0, "baseline_length": 2,
         "policy_ended": True, "baseline_ended": False, "policy_eos_penalty": -1.0, "baseline_eos_penalty": -1.0,
         "policy_empty": True, "baseline_empty": False, "policy_gold": -3.0, "baseline_gold": 0.0},
    ]  # fmt: skip
    summary = summarize(records, "policy", "baseline")
    assert summary["win_rate"] == 0.5 and summary["gold_win_rate"] == 0.25  # a tie and a loss on gold
    assert summary["policy_kl"] == 1.0 and summary["policy_empty"] == 0.5 and summary["baseline_ended"] == 0.5
    assert summary["gold_policy"] == -1.0 and summary["gold_baseline"] == 0.5


def test_compare_batch_gives_every_side_the_same_random_numbers(char_tokenizer):
    """Each side samples under the same seed: the baseline's answers do not depend on how much randomness the
    policy's sampling drew, and are the same at every evaluation."""
    import torch

    from rlhf_lightning.evaluation.compare import compare_batch

    prompts, prompt_mask = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2, dtype=torch.long)

    def sampler(draws: int):
        def sample(ids, mask):
            torch.rand(draws)  # a policy that draws more random numbers before its answer
            tokens = torch.randint(10, 20, (ids.shape[0], 3))
            sequences = torch.cat([ids, tokens], dim=1)
            return (
                sequences,
                torch.ones_like(sequences),
                torch.ones_like(tokens, dtype=torch.bool),
                torch.ones(2, dtype=torch.bool),
            )

        return sample

    def run(policy_draws: int, seed: int | None):
        samplers = {"policy": sampler(policy_draws), "baseline": sampler(0)}
        score = lambda seq, att, p, texts: seq[:, p:].float().sum(-1)  # noqa: E731
        return compare_batch(prompts, prompt_mask, samplers, score, char_tokenizer, seed=seed)

    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    records = run(policy_draws=5, seed=3)
    assert torch.equal(torch.rand(1), before)  # the global generator is left as it was
    again = run(policy_draws=100, seed=3)
    assert [r["baseline"] for r in records] == [r["baseline"] for r in again]
    same = run(policy_draws=0, seed=3)  # identical samplers under one seed give identical answers
    assert [r["policy"] for r in same] == [r["baseline"] for r in same]
    assert [r["policy_score"] for r in same] == [r["baseline_score"] for r in same]
