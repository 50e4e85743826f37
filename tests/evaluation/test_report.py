"""Reports: the over-optimisation curve and its table, by hand; markdown cells that stay in their cell."""

from rlhf_lightning.evaluation.report import markdown_table, overoptimization_point, overoptimization_table


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
