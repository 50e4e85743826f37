"""``rlhf-lightning label export`` and ``rlhf-lightning label judge``: rankings out of a labelling database, and
machine rankings into it. (``rlhf-lightning label DB`` serves the ranking page: :mod:`.label_app`.)

    rlhf-lightning label export runs/labels.sqlite runs/labels.jsonl [--min_agreement 0.6] [--sources [human]]
    rlhf-lightning label judge runs/labels.sqlite --judge rlhf_lightning.data.synthetic:gold_reward
    rlhf-lightning label judge runs/labels.sqlite --constitution principles.txt --judge_model embedded
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import JUDGE_PREFIX, SOURCES, AlreadyJudged, LabelStore, StaleItem, export_rows
from rlhf_lightning.data.labels import SUFFIXES as DATABASE_SUFFIXES
from rlhf_lightning.evaluation.judges import ConstitutionJudge, Judge, RuleJudge, judge_scores
from rlhf_lightning.evaluation.report import markdown_table
from rlhf_lightning.models.config import DType, Quantization
from rlhf_lightning.ops.agreement import groups_from_scores

log = logging.getLogger(__name__)


def export_labels(
    database: str,
    output: str,
    sources: list[Literal["human", "judge"]] | None = None,
    min_agreement: float | None = None,
) -> dict:
    """Write the database's rankings as the reward stage's ranking rows, and an agreement report beside them.

    Each row holds ``prompt``, ``responses``, ``ranking`` (ties kept), and ``item``, ``round``, ``annotator``,
    ``source``, ``policies``, ``comment``. The report (``OUTPUT`` with ``.agreement.json``) gives pairwise
    agreement and Kendall's tau-b per annotator pair on shared items, and each judge's agreement with the people.

    Args:
        database: The labelling database.
        output: The JSONL file to write.
        sources: Whose rankings to export: ``human``, ``judge`` (default both).
        min_agreement: Keep only items whose annotators agree at least this much (mean pairwise agreement
            in [0, 1]); items ranked by one annotator are then left out.

    Returns:
        The report (counts and agreement statistics).
    """
    out = Path(output)
    if out.suffix.lower() in DATABASE_SUFFIXES or _is_sqlite(out) or (out.exists() and out.samefile(database)):
        raise OptionError(f"label export: {output} is a database, not a JSONL file to write; name another output")
    rows, report = export_rows(LabelStore(database), tuple(sources or SOURCES), min_agreement)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    report_path = out.with_name(out.stem + ".agreement.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(_report_text(report, out, report_path))
    return report


def _is_sqlite(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _report_text(report: dict, out: Path, report_path: Path) -> str:
    def f(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"{report['exported']} of {report['rankings']} rankings written to {out}"]
    lines += [f"  left out: {n} ({why})" for why, n in report["dropped"].items()]
    if report["annotator_pairs"]:
        rows = [
            (" vs ".join(p["annotators"]), p["items"], f(p["agreement"]), f(p["kendall_tau"]))
            for p in report["annotator_pairs"]
        ]
        lines += [
            "",
            markdown_table(["annotators", "shared items", "agreement", "Kendall tau-b"], rows, numbered=False),
        ]
    if report["judges_vs_people"]:
        rows = [
            (j["judge"], j["comparisons"], f(j["agreement"]), f(j["kendall_tau"])) for j in report["judges_vs_people"]
        ]
        lines += [
            "",
            "Judges against the people who ranked the same items:",
            markdown_table(["judge", "rankings compared", "agreement", "Kendall tau-b"], rows, numbered=False),
        ]
    lines.append(f"-> {report_path}")
    return "\n".join(lines)


def judge_items(store: LabelStore, judge: Judge, progress: bool = True) -> int:
    """Rank every item ``judge`` has not ranked yet, one transaction each (an interrupted run goes on where
    it stopped); the judgements are recorded with source ``judge`` as annotator ``judge:<name>``, with the
    scores in the comment. The judge is given the prompt as the model saw it: a text prompt, or a conversation's
    every turn and its tools. Returns how many items it ranked."""
    annotator = JUDGE_PREFIX + judge.name
    todo = store.unjudged_items(annotator)
    for item_id in tqdm(todo, desc=f"judge {judge.name}", unit="item", disable=not progress):
        while True:  # again when `generate` added candidates to the item meanwhile
            item = store.item(item_id, annotator)
            scores = judge_scores(judge, item.prompt, [c.response for c in item.candidates], item.tools)
            by_key = dict(zip(item.keys, scores))
            in_order = [s for _, s in sorted(zip([c.id for c in item.candidates], scores))]  # the export's order
            comment = "scores, in the order of the exported responses: " + ", ".join(f"{s:.4g}" for s in in_order)
            groups = groups_from_scores(by_key)
            try:
                store.submit(item_id, annotator, item.version, groups, comment=comment, source="judge")
            except StaleItem:
                continue
            except AlreadyJudged:  # another process judged it meanwhile
                pass
            break
    return len(todo)


def judge_labels(
    database: str,
    judge: str | None = None,
    constitution: str | None = None,
    judge_model: str = "embedded",
    name: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: DType = "float32",
    quantization: Quantization = "none",
    progress: bool = True,
) -> int:
    """Rank the database's items with a judge (a rule, or an LLM checking a constitution) instead of people.

    The judge's records are marked as a judge's, so ``label export`` reports its agreement with the people on
    the items both ranked.

    Args:
        database: The labelling database.
        judge: A rule judge: ``module:function`` with the reward-function signature
            ``f(prompts: list[str], responses: list[str]) -> list[float]`` (higher is better). A prompt is its
            text, or for a conversation every turn, each starting with its role (``System: ...``,
            ``User: ...``; :func:`rlhf_lightning.evaluation.judges.transcript`).
        constitution: An LLM judge instead: a text file of principles that ``judge_model`` checks each answer
            against (AI feedback, as in Constitutional AI).
        judge_model: The LLM judge's model: a run's ``final`` folder, a Hugging Face folder or hub id, or
            ``embedded``.
        name: The judge's recorded name (``judge:<name>``); default: the function, or the constitution and model.
        batch_size: The LLM judge's candidates per forward pass.
        device: ``auto``, ``cpu`` or ``cuda`` (LLM judge).
        dtype: Weight dtype (LLM judge).
        quantization: 4-bit / 8-bit loading (LLM judge).
        progress: Show a progress bar.

    Returns:
        The number of items ranked.
    """
    if (judge is None) == (constitution is None):
        raise OptionError("give exactly one of --judge module:function (a rule) or --constitution FILE (an LLM judge)")
    store = LabelStore(database)
    if judge is not None:
        chosen: Judge = RuleJudge(judge, name)
    else:
        chosen = ConstitutionJudge(constitution, judge_model, name, batch_size, device=device, dtype=dtype,
                                   quantization=quantization)  # fmt: skip
    count = judge_items(store, chosen, progress)
    log.info(f"label judge: {chosen.name} ranked {count} items in {database}")
    return count
