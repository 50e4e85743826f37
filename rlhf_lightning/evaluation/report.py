"""Reports of an evaluation: markdown tables (TensorBoard's text tab renders them), the side-by-side samples,
the over-optimisation curve, and the scalars a run logged."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or " "


def markdown_table(headers: list[str], rows: list[tuple], numbered: bool = True) -> str:
    """A markdown table (TensorBoard's text tab renders it), its rows numbered unless ``numbered=False``;
    floats are shown with 3 decimals."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else _cell(str(value))

    if numbered:
        headers, rows = ["#", *headers], [(i, *row) for i, row in enumerate(rows)]
    lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def short_prompt(text: str, keep: int = 200) -> str:
    """A prompt for a table cell: whitespace runs as one space, and only its end when it is long (the
    request comes last)."""
    plain = " ".join(text.split())
    return plain if len(plain) <= keep else "…" + plain[-keep:]


def samples_table(records: list[dict], a: str, b: str, limit: int | None = None) -> str:
    """Markdown table: the prompt (the user's last message), then each side's response and raw score (and KL
    when measured)."""
    header = ["prompt", a, f"{a} score"]
    has_kl = bool(records) and f"{a}_kl" in records[0]
    if has_kl:
        header.append(f"{a} KL")
    header += [b, f"{b} score"]
    rows = []
    for r in records[:limit]:
        kl = [r[f"{a}_kl"]] if has_kl else []
        rows.append([short_prompt(r["prompt"]), r[a], r[f"{a}_score"], *kl, r[b], r[f"{b}_score"]])
    return markdown_table(header, rows)


def overoptimization_point(summary: dict[str, float], a: str, b: str, at: int | str) -> dict | None:
    """One point of the over-optimisation curve from a :func:`summarize` summary: ``at`` (an iteration, or a
    label), side ``a``'s mean KL to the reference (nats), its mean reward-model ``score`` and side ``b``'s
    (``baseline_score``; in PPO the baseline is the reference), and with a gold function both gold scores
    (``gold``, ``baseline_gold``); ``None`` when ``a``'s KL was not measured.

    Plotted against KL, the reward-model score keeps rising while the gold score rises, peaks and falls: the
    gap is how far the policy exploits the reward model's errors (Gao et al. 2022, "Scaling Laws for Reward
    Model Overoptimization", who plot against ``sqrt(KL)``)."""
    if f"{a}_kl" not in summary:
        return None
    point = {"at": at, "kl": summary[f"{a}_kl"], "score": summary[f"{a}_score"]}
    point["baseline_score"] = summary[f"{b}_score"]
    if f"gold_{a}" in summary:
        point |= {"gold": summary[f"gold_{a}"], "baseline_gold": summary[f"gold_{b}"]}
    return point


def overoptimization_table(points: list[dict]) -> str:
    """Markdown: one row per point of :func:`overoptimization_point`, in KL order (gold cells ``n/a`` for a
    point measured without a gold function)."""
    gold = any("gold" in p for p in points)
    headers = ["at", "KL (nats)", "sqrt KL", "reward model: policy", "reward model: baseline"]
    headers += ["gold: policy", "gold: baseline"] if gold else []
    rows = []
    for p in sorted(points, key=lambda p: p["kl"]):
        row = [str(p["at"]), p["kl"], max(p["kl"], 0.0) ** 0.5, p["score"], p["baseline_score"]]
        rows.append(tuple(row + ([p.get("gold", "n/a"), p.get("baseline_gold", "n/a")] if gold else [])))
    return markdown_table(headers, rows, numbered=False)


def alignment_verdict(summary: dict[str, float], curve: list[dict] | None = None) -> str:
    """In words: did the policy improve the true preference, or only the reward model's score?

    Args:
        summary: an evaluation's means (:func:`~rlhf_lightning.evaluation.compare.summarize` of the policy
            against the SFT baseline, keys without the ``eval/`` prefix): ``policy_score``, ``baseline_score``
            (reward model), and with a gold function ``gold_policy``, ``gold_baseline``, ``gold_win_rate``;
            ``policy_kl`` (nats), ``policy_length``/``baseline_length`` (tokens) and ``policy_empty`` (share)
            when measured.
        curve: the points of the over-optimisation curve during training (:func:`overoptimization_point`), to
            tell a gold score that peaked and fell from one that kept rising.

    Returns:
        One or more sentences: the proxy rose and the truth did not (the policy exploits the reward model);
        neither rose; the truth rose but peaked at a smaller KL (over-optimisation, Gao et al. 2022); the truth
        rose with the proxy; the truth rose while the proxy did not (the reward model does not track it); or, with
        no gold function, that only a person or a gold rule can tell. Answers at most half SFT's length, and
        any empty answers, are named in each case.
    """
    proxy = f"{summary['baseline_score']:.2f} for SFT to {summary['policy_score']:.2f}"
    kl = f" at a KL of {summary['policy_kl']:.2f} nats" if "policy_kl" in summary else ""
    sentences = []
    if "gold_policy" not in summary:
        moved = "rose" if summary["policy_score"] > summary["baseline_score"] else "did not rise"
        sentences.append(
            f"The reward-model score {moved} ({proxy}){kl}; with no gold function, whether the true preference "
            "improved is for a person to judge: read the held-out samples, or give evaluation.gold_function."
        )
    else:
        gold, baseline, win = summary["gold_policy"], summary["gold_baseline"], summary["gold_win_rate"]
        truth = f"{baseline:.2f} for SFT, {gold:.2f} for the policy, gold win rate {win:.2f}"
        peak = max((p for p in curve or [] if "gold" in p), key=lambda p: p["gold"], default=None)
        if summary["policy_score"] > summary["baseline_score"] and (gold <= baseline or win < 0.5):
            sentences.append(
                f"The reward-model score rose ({proxy}) but the true preference did not ({truth}){kl}: the policy "
                "learned what the reward model rewards, not the preference. Check the reward model (held-out "
                "accuracy, the degenerate-answer check) before training the policy longer."
            )
        elif gold <= baseline or win < 0.5:
            sentences.append(f"Neither the reward-model score ({proxy}) nor the true preference ({truth}) rose{kl}.")
        elif (
            peak is not None
            and peak["gold"] - gold > 0.5 * (peak["gold"] - baseline)
            and peak["kl"] < summary.get("policy_kl", float("inf"))
        ):
            sentences.append(
                f"The true preference rose ({truth}){kl}, but it peaked at {peak['gold']:.2f} at a KL of "
                f"{peak['kl']:.2f} nats and fell since (reward model {proxy}): over-optimisation. Fewer "
                "iterations or a larger KL coefficient keep the peak."
            )
        elif summary["policy_score"] > summary["baseline_score"]:
            sentences.append(
                f"The true preference rose with the reward-model score ({truth}; reward model {proxy}){kl}."
            )
        else:
            sentences.append(
                f"The true preference rose ({truth}){kl} while the reward-model score did not ({proxy}): the "
                "reward model does not track what improved (the KL penalty or a shaping term may have done the "
                "work). Check its held-out accuracy before relying on it for longer training."
            )
    length, baseline_length = summary.get("policy_length"), summary.get("baseline_length")
    if length is not None and baseline_length and length <= 0.5 * baseline_length:
        sentences.append(
            f"The policy's answers are {length:.0f} tokens against SFT's {baseline_length:.0f}: look for a length "
            "exploit in the samples."
        )
    if summary.get("policy_empty"):
        sentences.append(f"{summary['policy_empty']:.0%} of the policy's answers are empty.")
    return " ".join(sentences)


def report_markdown(
    summary: dict[str, float],
    records: list[dict],
    a: str,
    b: str,
    sources: dict,
    limit: int,
    overoptimization: list[dict] | None = None,
) -> str:
    lines = [f"# {a} vs {b}", ""]
    lines += [f"- {name}: `{value}`" for name, value in sources.items()]
    metrics = markdown_table(["metric", "value"], [(k, f"{v:.4f}") for k, v in summary.items()], numbered=False)
    lines += ["", metrics, ""]
    if overoptimization:
        lines += [
            "## Reward-model score and gold score against KL",
            "",
            "Each evaluation of the policy: where the reward-model score keeps rising while the gold score stops, "
            "the policy is exploiting the reward model (over-optimisation).",
            "",
            overoptimization_table(overoptimization),
            "",
        ]
    table = samples_table(records, a, b, limit)
    lines += [f"## Samples ({min(limit, len(records))} of {len(records)})", "", table, ""]
    return "\n".join(lines)


def read_scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar over every event file in ``run_dir`` (a resumed run adds files; for a
    step logged twice the later file wins). Empty when the tag was never logged."""
    values: dict[int, float] = {}
    for events in sorted(Path(run_dir).glob("events.out.tfevents.*")):  # names start with creation time
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return dict(sorted(values.items()))


def read_curve(run_dir: str | Path) -> list[dict]:
    """The over-optimisation curve of a PPO run folder from its TensorBoard ``eval/*`` scalars: one
    :func:`overoptimization_point` per evaluation during training (``at`` is the logged step), in step order."""
    tags = {"kl": "eval/policy_kl", "score": "eval/policy_score", "baseline_score": "eval/baseline_score",
            "gold": "eval/gold_policy", "baseline_gold": "eval/gold_baseline"}  # fmt: skip
    series = {key: read_scalars(run_dir, tag) for key, tag in tags.items()}
    points = []
    for step in series["kl"]:
        point = {"at": step, **{key: values[step] for key, values in series.items() if step in values}}
        if "score" in point and "baseline_score" in point:
            points.append(point)
    return points
