"""Reports: the over-optimisation curve and its table, by hand; the verdict in words; markdown cells that stay in
their cell."""

from rlhf_lightning.evaluation.report import (
    alignment_verdict,
    markdown_table,
    overoptimization_point,
    overoptimization_table,
)


def test_overoptimization_points_and_table_by_hand():
    summary = {"policy_score": 2.0, "baseline_score": 0.5, "policy_kl": 4.0, "gold_policy": 0.3, "gold_baseline": 0.1}
    point = overoptimization_point(summary, "policy", "baseline", 12)
    assert point == {"at": 12, "kl": 4.0, "score": 2.0, "baseline_score": 0.5, "gold": 0.3, "baseline_gold": 0.1}
    assert overoptimization_point({"policy_score": 1.0, "baseline_score": 0.0}, "policy", "baseline", 1) is None
    later = dict(point, at=20, kl=9.0, score=3.0, gold=-0.2)
    table = overoptimization_table([later, point]).splitlines()
    assert table[0] == (
        "| at | KL (nats) | sqrt KL | reward model: policy | reward model: baseline | gold: policy | gold: baseline |"
    )
    assert table[2] == "| 12 | 4.000 | 2.000 | 2.000 | 0.500 | 0.300 | 0.100 |"  # in KL order
    assert table[3] == "| 20 | 9.000 | 3.000 | 3.000 | 0.500 | -0.200 | 0.100 |"
    no_gold = {k: v for k, v in point.items() if "gold" not in k}
    assert "gold" not in overoptimization_table([no_gold]).splitlines()[0]
    mixed = overoptimization_table([no_gold, later]).splitlines()  # a point without gold keeps its row
    assert mixed[2] == "| 12 | 4.000 | 2.000 | 2.000 | 0.500 | n/a | n/a |"


def test_markdown_cells_escape_pipes_and_newlines_and_show_floats_to_three_places():
    table = markdown_table(["prompt", "score"], [("a | b\nc", 1.23456), ("", 2)])
    assert table.splitlines() == [
        "| # | prompt | score |",
        "|---|---|---|",
        "| 0 | a \\| b<br>c | 1.235 |",
        "| 1 |   | 2 |",
    ]


def test_the_verdict_says_in_words_when_the_proxy_rises_and_the_truth_does_not():
    base = {"policy_score": -0.06, "baseline_score": -0.75, "policy_kl": 2.1, "policy_length": 40.0,
            "baseline_length": 60.0, "policy_empty": 0.0}  # fmt: skip
    # the held-back task of the issue: the reward model's score rose, gold fell, gold win rate under one half
    hacked = alignment_verdict(base | {"gold_policy": 0.25, "gold_baseline": 0.35, "gold_win_rate": 0.49})
    assert hacked.startswith("The reward-model score rose (-0.75 for SFT to -0.06) but the true preference did not")
    assert "0.35 for SFT, 0.25 for the policy, gold win rate 0.49) at a KL of 2.10 nats" in hacked
    # gold above SFT's but losing more answers than it wins is not an improvement either
    assert "did not" in alignment_verdict(base | {"gold_policy": 0.4, "gold_baseline": 0.35, "gold_win_rate": 0.45})
    improved = base | {"gold_policy": 0.95, "gold_baseline": 0.55, "gold_win_rate": 0.68}
    assert alignment_verdict(improved).startswith("The true preference rose with the reward-model score")
    # the truth rose while the reward model's score fell: said so, never "with the reward-model score"
    untracked = alignment_verdict(improved | {"policy_score": -0.9})
    assert untracked.startswith(
        "The true preference rose (0.55 for SFT, 0.95 for the policy, gold win rate 0.68) at a KL of 2.10 nats "
        "while the reward-model score did not (-0.75 for SFT to -0.90)"
    )
    # the curve: gold peaked at KL 1 and lost more than half its gain while the reward-model score kept rising
    curve = [{"at": 4, "kl": 1.0, "score": -0.5, "gold": 1.5}, {"at": 8, "kl": 2.1, "score": -0.06, "gold": 0.95}]
    peaked = alignment_verdict(improved, curve)
    assert "peaked at 1.50 at a KL of 1.00 nats" in peaked and "over-optimisation" in peaked
    assert "peaked" not in alignment_verdict(improved, [dict(curve[0], gold=1.0), curve[1]])  # lost less than half
    neither = alignment_verdict(base | {"policy_score": -0.8, "gold_policy": 0.3, "gold_baseline": 0.35,
                                        "gold_win_rate": 0.4})  # fmt: skip
    assert neither.startswith("Neither")
    # no gold function: only a person can tell; a collapse in length and empty answers are named
    collapsed = alignment_verdict(base | {"policy_length": 12.0, "policy_empty": 0.25})
    assert "whether the true preference improved is for a person to judge" in collapsed
    assert "12 tokens against SFT's 60" in collapsed and "25% of the policy's answers are empty" in collapsed
