"""The labelling database: prompts, the candidate responses policies wrote for them, and the rankings people
and judges gave. One SQLite file (standard library ``sqlite3``, WAL journal, ``synchronous=FULL``), written
by ``rlhf-lightning generate``, ``label`` and ``label judge``, read by ``label export`` and by the reward stage
(a ``.sqlite`` / ``.db`` path among its ``train_files``).

Tables:

- ``prompts``: each prompt once (its row's ``prompt`` or ``messages``, and ``tools``, as JSON) and its display text;
- ``items``: what an annotator ranks: one prompt in one round, with its candidates;
- ``candidates``: one response of an item, the policy and sampling settings that wrote it (identical
  responses to the same item are stored once);
- ``generated``: which prompts a generation run finished (the same run started again skips them);
- ``judgements``: one per item and annotator: a ranking (candidate ids grouped best to worst; a group holds
  ties), "none acceptable", a comment, or a skip; ``source`` is ``human`` or ``judge``;
- ``leases``: the item each annotator has open, so a reload shows the same item;
- ``meta``: settings such as ``annotators_per_item``.

An item takes new candidates (another policy, more samples) until someone ranks it; after that, candidates for
the same prompt and round start a new item. A response already stored for a prompt in a round is not stored
again. Every write is one transaction: a judgement acknowledged to the annotator is on disk.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import random
import sqlite3
import string
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from rlhf_lightning.ops.agreement import kendall_tau_b, pairwise_agreement, ranks_from_groups

log = logging.getLogger(__name__)

SUFFIXES = (".sqlite", ".sqlite3", ".db")
SCHEMA_VERSION = 2
"""2: ``candidates.ended`` (whether the answer ended with a stop token; NULL in databases from version 1)."""
LEASE_MINUTES = 30
"""An item opened by an annotator is held for them this long; after that, others may be given it."""
SOURCES = ("human", "judge")
JUDGE_PREFIX = "judge:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL UNIQUE,
    display TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    round INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_prompt ON items (prompt_id, round);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    response TEXT NOT NULL,
    policy TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ended INTEGER,
    UNIQUE (item_id, response)
);
CREATE TABLE IF NOT EXISTS generated (
    run TEXT NOT NULL,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    PRIMARY KEY (run, prompt_id)
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('human', 'judge')),
    kind TEXT NOT NULL CHECK (kind IN ('ranking', 'skip')),
    ranking TEXT,
    none_acceptable INTEGER NOT NULL DEFAULT 0,
    comment TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    UNIQUE (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS leases (
    annotator TEXT PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    started_at TEXT NOT NULL
);
"""


class LabelError(ValueError):
    """A request the database refuses; ``status`` is the HTTP status the web app answers with."""

    status = 400


class UnknownItem(LabelError):
    status = 404


class StaleItem(LabelError):
    """The item's candidates changed since the annotator's page showed it."""

    status = 409


class AlreadyJudged(LabelError):
    """The annotator already submitted this item; nothing was changed."""

    status = 409

    def __init__(self, message: str, judgement: dict) -> None:
        super().__init__(message)
        self.judgement = judgement


class InvalidRanking(LabelError):
    status = 422


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def prompt_key(prompt: str | list, tools: list | None = None) -> str:
    """The stored form of a prompt (canonical JSON of the prompt and its tools): one row per distinct prompt."""
    value = {"prompt": prompt, **({"tools": tools} if tools else {})}
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class Candidate:
    id: int
    response: str
    policy: str
    settings: dict
    ended: bool | None = None
    """Whether the answer ended with a stop token (``False``: cut off at ``max_new_tokens``; ``None``: not
    recorded, a database from before this was kept)."""


@dataclass
class Item:
    """An item as one annotator sees it: candidates in that annotator's shuffled order, under opaque keys
    (``A``, ``B``, ...) that say nothing about the policy or the order the candidates were written in."""

    id: int
    round: int
    prompt: str | list
    display: str
    candidates: list[Candidate]
    keys: list[str]
    version: str
    """Fingerprint of the candidate set; a submission for an older set is refused as stale."""
    tools: list | None = None

    def conversation(self) -> list[dict]:
        """The prompt as the model saw it, as messages: a text prompt is the user's one turn; a conversation
        keeps its system message and earlier turns."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]

    def public(self) -> dict:
        """What the web page receives: no candidate id, policy or settings. ``conversation`` is every turn of
        the prompt (and ``tools`` its tool definitions); a candidate's ``cut_off`` says it stopped at the
        length limit, not where the model ended it."""
        return {
            "item": self.id,
            "round": self.round,
            "prompt": self.display,
            "conversation": self.conversation(),
            "tools": self.tools or [],
            "version": self.version,
            "candidates": [
                {"key": k, "text": c.response, "cut_off": c.ended is False} for k, c in zip(self.keys, self.candidates)
            ],
        }


@dataclass
class GenerationCounts:
    """What a generation run stored: prompts, candidates, and the responses it left out."""

    prompts: int = 0
    candidates: int = 0
    duplicates: int = 0
    """Responses identical to one the item already had."""
    empty: int = 0
    new_items: int = 0
    cut_off: int = 0
    """Stored candidates that did not end with a stop token (cut at the length limit)."""


def _keys(count: int) -> list[str]:
    letters = string.ascii_uppercase
    return [letters[i] if i < 26 else f"{letters[i // 26 - 1]}{letters[i % 26]}" for i in range(count)]


def _version(candidate_ids: Sequence[int]) -> str:
    return hashlib.sha1(",".join(map(str, sorted(candidate_ids))).encode()).hexdigest()[:12]


class LabelStore:
    """One labelling database file. Each call opens its own connection, so one store may serve many threads
    (the web app) and several processes may use the same file (WAL)."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path, self.create = Path(path), create
        if not create and not self.path.exists():
            raise LabelError(f"{self.path}: no such labelling database (`rlhf-lightning generate` creates one)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            if create:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('annotators_per_item', '1')")
            version = self._meta(db, "schema_version")
            if version is None:
                raise LabelError(f"{self.path}: not a labelling database (no schema version)")
            if int(version) > SCHEMA_VERSION:
                raise LabelError(f"{self.path}: written by a newer version (schema {version}); upgrade rlhf_lightning")
            if int(version) < 2:  # candidates learn whether they ended; the old ones stay unknown (NULL)
                db.execute("BEGIN IMMEDIATE")
                columns = {r[1] for r in db.execute("PRAGMA table_info(candidates)")}
                if "ended" not in columns:
                    db.execute("ALTER TABLE candidates ADD COLUMN ended INTEGER")
                db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
                db.execute("COMMIT")

    # --- connections -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            target = self.path if self.create else f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=rw"
            db = sqlite3.connect(target, timeout=30, isolation_level=None, uri=not self.create)
        except sqlite3.Error as error:
            raise LabelError(f"{self.path}: cannot open the labelling database: {error}") from error
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except sqlite3.DatabaseError as error:
            if "file is not a database" in str(error):
                raise LabelError(f"{self.path}: not a SQLite database") from error
            raise
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (``BEGIN IMMEDIATE``) so concurrent writers queue."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else row[0]

    # --- settings --------------------------------------------------------------------------------------------
    @property
    def annotators_per_item(self) -> int:
        """How many people are asked to rank each item (a setting kept in the database)."""
        with self._connect() as db:
            return int(self._meta(db, "annotators_per_item") or 1)

    @annotators_per_item.setter
    def annotators_per_item(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabelError(f"annotators_per_item must be an integer >= 1, got {value!r}")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('annotators_per_item', ?)", (str(value),))

    # --- generation ------------------------------------------------------------------------------------------
    def done_prompts(self, run: str) -> set[str]:
        """Prompts (as :func:`prompt_key` gives them) a generation run already stored; ``run`` identifies its
        policy, prompts file and sampling settings."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT prompts.prompt FROM generated JOIN prompts ON prompts.id = generated.prompt_id "
                "WHERE generated.run = ?",
                (run,),
            )
            return {r[0] for r in rows}

    def add_candidates(
        self,
        run: str,
        round: int,
        policy: str,
        settings: dict,
        prompts: Sequence[tuple[str | list, list | None, str, Sequence[str | tuple[str, bool]]]],
    ) -> GenerationCounts:
        """Store a batch of a generation run in one transaction. For each ``(prompt, tools, display,
        responses)`` not stored by this ``run`` before: the prompt (once), and the responses that are neither
        empty nor already stored for this prompt in this ``round``, in the prompt's open item of the round (one
        nobody has ranked yet) or a new one. A response is its text, or ``(text, ended)`` where ``ended`` says
        whether it ended with a stop token (``False``: cut off at the length limit)."""
        counts = GenerationCounts()
        now, settings_json = _now(), json.dumps(settings, sort_keys=True)
        with self._transaction() as db:
            for prompt, tools, display, responses in prompts:
                key = prompt_key(prompt, tools)
                db.execute("INSERT OR IGNORE INTO prompts (prompt, display) VALUES (?, ?)", (key, display))
                prompt_id = db.execute("SELECT id FROM prompts WHERE prompt = ?", (key,)).fetchone()[0]
                if db.execute("INSERT OR IGNORE INTO generated VALUES (?, ?)", (run, prompt_id)).rowcount == 0:
                    continue  # stored by an earlier attempt
                counts.prompts += 1
                seen = {
                    r[0]
                    for r in db.execute(
                        "SELECT response FROM candidates JOIN items ON items.id = candidates.item_id "
                        "WHERE items.prompt_id = ? AND items.round = ?",
                        (prompt_id, round),
                    )
                }
                new = []
                for given in responses:
                    response, ended = (given, None) if isinstance(given, str) else given
                    response = response.strip()
                    if not response:
                        counts.empty += 1
                    elif response in seen:
                        counts.duplicates += 1
                    else:
                        seen.add(response)
                        new.append((response, ended))
                if not new:
                    continue
                item = db.execute(
                    "SELECT id FROM items WHERE prompt_id = ? AND round = ? AND id NOT IN "
                    "(SELECT item_id FROM judgements WHERE kind = 'ranking') ORDER BY id DESC LIMIT 1",
                    (prompt_id, round),
                ).fetchone()
                if item is None:
                    item = (db.execute("INSERT INTO items (prompt_id, round, created_at) VALUES (?, ?, ?)",
                                       (prompt_id, round, now)).lastrowid,)  # fmt: skip
                    counts.new_items += 1
                for response, ended in new:
                    db.execute(
                        "INSERT INTO candidates (item_id, response, policy, settings, created_at, ended) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (item[0], response, policy, settings_json, now, None if ended is None else int(ended)),
                    )
                counts.candidates += len(new)
                counts.cut_off += sum(ended is False for _, ended in new)
        return counts

    # --- items -----------------------------------------------------------------------------------------------
    def _candidates(self, db: sqlite3.Connection, item_id: int) -> list[Candidate]:
        rows = db.execute(
            "SELECT id, response, policy, settings, ended FROM candidates WHERE item_id = ? ORDER BY id", (item_id,)
        )
        return [
            Candidate(
                r["id"],
                r["response"],
                r["policy"],
                json.loads(r["settings"]),
                None if r["ended"] is None else bool(r["ended"]),
            )  # fmt: skip
            for r in rows
        ]

    def _item(self, db: sqlite3.Connection, item_id: int, annotator: str) -> Item:
        row = db.execute(
            "SELECT items.id, items.round, prompts.prompt, prompts.display FROM items "
            "JOIN prompts ON prompts.id = items.prompt_id WHERE items.id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            raise UnknownItem(f"no item {item_id} in {self.path}")
        candidates = self._candidates(db, item_id)
        version = _version([c.id for c in candidates])
        random.Random(f"{item_id}/{annotator}/{version}").shuffle(candidates)  # the same order on every reload
        stored = json.loads(row["prompt"])
        return Item(
            row["id"], row["round"], stored["prompt"], row["display"], candidates, _keys(len(candidates)), version,
            stored.get("tools"),
        )  # fmt: skip

    def item(self, item_id: int, annotator: str) -> Item:
        """Item ``item_id`` as ``annotator`` sees it. Raises :class:`UnknownItem`."""
        with self._connect() as db:
            return self._item(db, item_id, annotator)

    _OPEN = (
        "SELECT items.id FROM items WHERE (SELECT COUNT(*) FROM candidates WHERE item_id = items.id) >= 2 "
        "AND items.id NOT IN (SELECT item_id FROM judgements WHERE annotator = :annotator) "
    )

    def next_item(self, annotator: str, source: str = "human") -> Item | None:
        """The item ``annotator`` should rank now: the one they have open (so a reload resumes it), else the
        first item (by round, then age) with at least 2 candidates that they have not judged or skipped and
        that fewer than ``annotators_per_item`` people have ranked or hold open. ``None`` when nothing is left."""
        annotator = require_annotator(annotator, source)
        with self._transaction() as db:
            lease = db.execute(
                "SELECT item_id FROM leases WHERE annotator = ? AND item_id NOT IN "
                "(SELECT item_id FROM judgements WHERE annotator = ?)",
                (annotator, annotator),
            ).fetchone()
            if lease is not None:
                return self._item(db, lease[0], annotator)
            cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=LEASE_MINUTES)
            row = db.execute(
                self._OPEN + "AND (SELECT COUNT(*) FROM judgements WHERE item_id = items.id AND source = 'human' "
                "AND kind = 'ranking') + (SELECT COUNT(*) FROM leases WHERE item_id = items.id AND "
                "annotator != :annotator AND started_at > :cutoff) < :needed ORDER BY items.round, items.id LIMIT 1",
                {
                    "annotator": annotator,
                    "cutoff": cutoff.isoformat(timespec="milliseconds"),
                    "needed": int(self._meta(db, "annotators_per_item") or 1) if source == "human" else 1,
                },
            ).fetchone()
            if row is None:
                db.execute("DELETE FROM leases WHERE annotator = ?", (annotator,))
                return None
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (annotator, row[0], _now()))
            return self._item(db, row[0], annotator)

    def unjudged_items(self, annotator: str) -> list[int]:
        """Ids of every rankable item (>= 2 candidates) ``annotator`` has not judged: a judge's work list."""
        with self._connect() as db:
            return [r[0] for r in db.execute(self._OPEN + "ORDER BY items.round, items.id", {"annotator": annotator})]

    # --- judgements ------------------------------------------------------------------------------------------
    def submit(
        self,
        item_id: int,
        annotator: str,
        version: str | None,
        ranking: Sequence[Sequence[str]] | None,
        none_acceptable: bool = False,
        comment: str = "",
        skip: bool = False,
        source: str = "human",
    ) -> dict:
        """Save ``annotator``'s judgement of an item in one transaction and return it.

        ``ranking`` groups the candidates' keys (as :meth:`item` gave them to this annotator) best to worst; a
        group of several keys is a tie. It must hold every candidate exactly once, except with ``skip`` (then
        it is ignored). ``version`` is the item's version the annotator saw (``None``: not checked, for judges).

        Raises :class:`UnknownItem`, :class:`StaleItem` (the candidates changed), :class:`InvalidRanking` (not
        a grouping of every candidate) or :class:`AlreadyJudged` (a repeat: nothing is changed).
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        annotator = require_annotator(annotator, source)
        if not isinstance(comment, str) or len(comment) > 10_000:
            raise InvalidRanking("comment must be text of at most 10000 characters")
        with self._transaction() as db:
            item = self._item(db, item_id, annotator)
            earlier = db.execute(
                "SELECT * FROM judgements WHERE item_id = ? AND annotator = ?", (item_id, annotator)
            ).fetchone()
            if earlier is not None:
                raise AlreadyJudged(
                    f"item {item_id} was already {'skipped' if earlier['kind'] == 'skip' else 'ranked'} by "
                    f"{annotator} at {earlier['created_at']}; nothing was changed",
                    self._judgement(earlier, item),
                )
            if version is not None and version != item.version:
                raise StaleItem(f"item {item_id} changed since it was shown (new candidates); reload it")
            groups = None if skip else _candidate_groups(item, ranking)
            db.execute(
                "INSERT INTO judgements (item_id, annotator, source, kind, ranking, none_acceptable, comment, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id, annotator, source, "skip" if skip else "ranking",
                    None if groups is None else json.dumps(groups), int(bool(none_acceptable)), comment, _now(),
                ),
            )  # fmt: skip
            db.execute("DELETE FROM leases WHERE annotator = ? AND item_id = ?", (annotator, item_id))
            row = db.execute(
                "SELECT * FROM judgements WHERE item_id = ? AND annotator = ?", (item_id, annotator)
            ).fetchone()
            return self._judgement(row, item)

    @staticmethod
    def _judgement(row: sqlite3.Row, item: Item) -> dict:
        """A stored judgement in the annotator's keys (what the web app answers)."""
        key_of = {c.id: k for k, c in zip(item.keys, item.candidates)}
        groups = json.loads(row["ranking"]) if row["ranking"] else None
        return {
            "item": row["item_id"],
            "annotator": row["annotator"],
            "source": row["source"],
            "skipped": row["kind"] == "skip",
            "ranking": None if groups is None else [[key_of.get(c, str(c)) for c in g] for g in groups],
            "none_acceptable": bool(row["none_acceptable"]),
            "comment": row["comment"],
            "saved_at": row["created_at"],
        }

    def unskip(self, item_id: int, annotator: str) -> dict:
        """Undo ``annotator``'s skip of an item in one transaction: the skip is deleted and the item becomes the
        one they have open (:meth:`next_item` gives it to them next; the item they had open goes back to the
        pool). Returns the deleted skip. Raises :class:`UnknownItem`, :class:`AlreadyJudged` (they ranked it:
        only a skip is undone) or :class:`LabelError` (they have not skipped it)."""
        annotator = require_annotator(annotator)
        with self._transaction() as db:
            item = self._item(db, item_id, annotator)
            row = db.execute(
                "SELECT * FROM judgements WHERE item_id = ? AND annotator = ?", (item_id, annotator)
            ).fetchone()
            if row is None:
                raise LabelError(f"{annotator} has not skipped item {item_id}: there is no skip to undo")
            if row["kind"] != "skip":
                raise AlreadyJudged(
                    f"item {item_id} was ranked by {annotator} at {row['created_at']}, not skipped; only a skip "
                    "can be undone",
                    self._judgement(row, item),
                )
            db.execute("DELETE FROM judgements WHERE id = ?", (row["id"],))
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (annotator, item_id, _now()))
            return self._judgement(row, item)

    # --- progress --------------------------------------------------------------------------------------------
    def progress(self, annotator: str | None = None) -> dict:
        """Counts for the page: rankable items, items ranked by enough people, and per annotator their
        rankings and skips (``you``: ``annotator``'s)."""
        with self._connect() as db:
            needed = int(self._meta(db, "annotators_per_item") or 1)
            rankable = db.execute(
                "SELECT COUNT(*) FROM items WHERE (SELECT COUNT(*) FROM candidates WHERE item_id = items.id) >= 2"
            ).fetchone()[0]
            complete = db.execute(
                "SELECT COUNT(*) FROM (SELECT item_id FROM judgements WHERE source = 'human' AND kind = 'ranking' "
                "GROUP BY item_id HAVING COUNT(*) >= ?)",
                (needed,),
            ).fetchone()[0]
            per = {
                r["annotator"]: {"source": r["source"], "ranked": r["ranked"], "skipped": r["skipped"]}
                for r in db.execute(
                    "SELECT annotator, source, SUM(kind = 'ranking') AS ranked, SUM(kind = 'skip') AS skipped "
                    "FROM judgements GROUP BY annotator ORDER BY annotator"
                )
            }
            result = {"items": rankable, "complete": complete, "annotators_per_item": needed, "annotators": per}
            if annotator:
                mine = per.get(annotator, {"ranked": 0, "skipped": 0})
                result["you"] = {"annotator": annotator, "done": mine["ranked"] + mine["skipped"], **mine}
        return result

    def round_progress(self, round: int) -> tuple[int, int]:
        """``(rankable items, items done)`` of one round: done when ``annotators_per_item`` people ranked or
        skipped it (an item everyone skips must not hold the round up)."""
        with self._connect() as db:
            needed = int(self._meta(db, "annotators_per_item") or 1)
            rankable = db.execute(
                "SELECT COUNT(*) FROM items WHERE round = ? AND "
                "(SELECT COUNT(*) FROM candidates WHERE item_id = items.id) >= 2",
                (round,),
            ).fetchone()[0]
            complete = db.execute(
                "SELECT COUNT(*) FROM items WHERE round = ? AND (SELECT COUNT(*) FROM judgements WHERE item_id = "
                "items.id AND source = 'human') >= ?",
                (round, needed),
            ).fetchone()[0]
        return rankable, complete

    # --- reading everything ----------------------------------------------------------------------------------
    def judgements(self, sources: Sequence[str] = SOURCES) -> list[dict]:
        """Every ranking (skips left out), in the order they were saved: ``id``, ``item``, ``round``,
        ``annotator``, ``source``, ``prompt``, ``tools``, ``candidates`` (id, response, policy), ``ranks``
        (candidate id -> rank, 1 = best), ``none_acceptable``, ``comment``, ``saved_at``."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT judgements.*, items.round, prompts.prompt FROM judgements "
                "JOIN items ON items.id = judgements.item_id JOIN prompts ON prompts.id = items.prompt_id "
                "WHERE kind = 'ranking' ORDER BY judgements.id"
            ).fetchall()
            candidates = {}
            result = []
            for row in rows:
                if row["source"] not in sources:
                    continue
                if row["item_id"] not in candidates:
                    candidates[row["item_id"]] = self._candidates(db, row["item_id"])
                stored = json.loads(row["prompt"])
                result.append(
                    {
                        "id": row["id"],
                        "item": row["item_id"],
                        "round": row["round"],
                        "annotator": row["annotator"],
                        "source": row["source"],
                        "prompt": stored["prompt"],
                        "tools": stored.get("tools"),
                        "candidates": candidates[row["item_id"]],
                        "ranks": ranks_from_groups(json.loads(row["ranking"])),
                        "none_acceptable": bool(row["none_acceptable"]),
                        "comment": row["comment"],
                        "saved_at": row["created_at"],
                    }
                )
        return result

    def counts(self) -> dict:
        """Rows per table: a quick look at what the database holds."""
        with self._connect() as db:
            tables = ("prompts", "items", "candidates", "judgements")
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def require_annotator(name: object, source: str = "human") -> str:
    """An annotator's name: 1-200 printable characters; ``judge:`` starts a judge's name and only a judge's."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200 or not name.strip().isprintable():
        raise LabelError(f"annotator must be a name of 1 to 200 printable characters, got {repr(name)[:80]}")
    if name.strip().startswith(JUDGE_PREFIX) != (source == "judge"):
        raise LabelError(
            f"annotator names starting with {JUDGE_PREFIX!r} are for judges, and only for them: {name[:80]!r}"
        )
    return name.strip()


def _candidate_groups(item: Item, ranking: object) -> list[list[int]]:
    """The ranking in candidate ids, or :class:`InvalidRanking` unless it groups every key exactly once."""
    by_key = {k: c.id for k, c in zip(item.keys, item.candidates)}
    if not isinstance(ranking, list | tuple) or not all(isinstance(g, list | tuple) and g for g in ranking):
        raise InvalidRanking("ranking must be a list of non-empty groups of candidate keys, best first")
    flat = [k for group in ranking for k in group]
    unknown = [k for k in flat if k not in by_key]
    if unknown:
        raise InvalidRanking(f"unknown candidate keys {unknown}; item {item.id} has {sorted(by_key)}")
    if len(flat) != len(set(flat)) or set(flat) != set(by_key):
        repeated = sorted({k for k in flat if flat.count(k) > 1})
        missing = sorted(set(by_key) - set(flat))
        raise InvalidRanking(
            f"ranking must order every candidate of item {item.id} exactly once (repeated: {repeated or 'none'}, "
            f"missing: {missing or 'none'})"
        )
    return [[by_key[k] for k in group] for group in ranking]


# --- export --------------------------------------------------------------------------------------------------
def ranking_row(judgement: dict) -> dict:
    """A judgement as the reward stage's ranking row: ``prompt``, ``responses`` (the item's candidates),
    ``ranking`` (each response's rank, 1 = best, ties equal), ``ended`` (whether each ended with a stop token,
    ``null`` where not recorded; the reward stage leaves cut-off answers out by default) and where it came from."""
    candidates = [c for c in judgement["candidates"] if c.id in judgement["ranks"]]
    row = {
        "prompt": judgement["prompt"],
        # a conversational prompt takes responses as assistant-message lists (the conversational format)
        "responses": [
            [{"role": "assistant", "content": c.response}] if isinstance(judgement["prompt"], list) else c.response
            for c in candidates
        ],
        "ranking": [judgement["ranks"][c.id] for c in candidates],
        "ended": [c.ended for c in candidates],
        "judgement": judgement["id"],
        "item": judgement["item"],
        "round": judgement["round"],
        "annotator": judgement["annotator"],
        "source": judgement["source"],
        "policies": [c.policy for c in candidates],
        "none_acceptable": judgement["none_acceptable"],
        "comment": judgement["comment"],
    }
    if judgement.get("tools"):
        row["tools"] = judgement["tools"]
    return row


@dataclass
class Agreement:
    """Agreement among the annotators of shared items."""

    items: dict[int, float]
    """Mean pairwise agreement of each item ranked by >= 2 annotators."""
    pairs: list[dict]
    """Per annotator pair: shared items, mean pairwise agreement and mean Kendall's tau-b."""
    judges: list[dict]
    """Per judge: items shared with people, and its mean agreement and tau-b with them."""


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else None


def agreement(judgements: list[dict]) -> Agreement:
    """Pairwise agreement and Kendall's tau-b (:mod:`rlhf_lightning.ops.agreement`) between every two
    annotators on the items both ranked; per item (among people, or all annotators when no two people ranked
    it), and of each judge with the people."""
    by_item: dict[int, dict[str, dict]] = defaultdict(dict)
    for j in judgements:
        by_item[j["item"]][j["annotator"]] = j
    pair_values: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    judge_values: dict[str, list[tuple[float, float]]] = defaultdict(list)
    items = {}
    for item, annotators in by_item.items():
        people = [a for a, j in annotators.items() if j["source"] == "human"]
        among = people if len(people) >= 2 else list(annotators)
        scores = []
        for a, b in combinations(sorted(annotators), 2):
            ra, rb = annotators[a]["ranks"], annotators[b]["ranks"]
            values = (pairwise_agreement(ra, rb), kendall_tau_b(ra, rb))
            pair_values[(a, b)].append(values)
            if a in among and b in among:
                scores.append(values[0])
            for judge, person in ((a, b), (b, a)):
                if annotators[judge]["source"] == "judge" and annotators[person]["source"] == "human":
                    judge_values[judge].append(values)
        if scores:
            items[item] = _mean(scores)
    pairs = [
        {
            "annotators": list(key),
            "items": len(v),
            "agreement": _mean([x for x, _ in v]),
            "kendall_tau": _mean([t for _, t in v]),
        }
        for key, v in sorted(pair_values.items())
    ]
    judges = [
        {
            "judge": k,
            "comparisons": len(v),
            "agreement": _mean([x for x, _ in v]),
            "kendall_tau": _mean([t for _, t in v]),
        }
        for k, v in sorted(judge_values.items())
    ]
    return Agreement(items, pairs, judges)


def export_rows(
    store: LabelStore, sources: Sequence[str] = SOURCES, min_agreement: float | None = None
) -> tuple[list[dict], dict]:
    """The database's rankings as reward-stage rows and a report: counts, agreement statistics, and with
    ``min_agreement`` only rankings of items whose annotators agree at least that much (items with a single
    annotator are left out then, having no agreement to measure)."""
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
    judgements = store.judgements(sources)
    stats = agreement(judgements)
    kept, dropped = [], defaultdict(int)
    for j in judgements:
        if len(set(j["ranks"].values())) < 2:
            dropped["all candidates tied"] += 1
        elif min_agreement is not None and j["item"] not in stats.items:
            dropped["one annotator (no agreement to measure)"] += 1
        elif min_agreement is not None and stats.items[j["item"]] < min_agreement:
            dropped[f"item agreement below {min_agreement}"] += 1
        else:
            kept.append(ranking_row(j))
    report = {
        "rankings": len(judgements),
        "exported": len(kept),
        "dropped": dict(dropped),
        "items_with_several_annotators": len(stats.items),
        "mean_item_agreement": _mean(list(stats.items.values())),
        "annotator_pairs": stats.pairs,
        "judges_vs_people": stats.judges,
    }
    return kept, report


LABEL_SOURCES_AUTO = "auto"
DISAGREEMENT_WARNING = 0.6
"""A judge whose pairwise agreement with the people on shared items is below this is warned about..."""
DISAGREEMENT_MIN_ITEMS = 5
"""...once they share at least this many items."""


def chosen_sources(label_sources: str | Sequence[str], present: Counter) -> tuple[str, ...]:
    """The sources a database's rankings are read from: ``auto`` is the people's when the database has any
    (``present`` counts rankings per source), else the judges'; a list is taken as given (checked)."""
    if label_sources == LABEL_SOURCES_AUTO:
        return ("human",) if present["human"] else ("judge",)
    chosen = tuple(dict.fromkeys([label_sources] if isinstance(label_sources, str) else label_sources))
    if not chosen or any(s not in SOURCES for s in chosen):
        raise ValueError(f"label_sources: expected {LABEL_SOURCES_AUTO!r} or a list of {list(SOURCES)}, got "
                         f"{label_sources!r}")  # fmt: skip
    return chosen


def read_label_rows(path: str, label_sources: str | Sequence[str] = LABEL_SOURCES_AUTO) -> Iterator[tuple[int, dict]]:
    """``(judgement id, ranking row)`` of every ranking from ``label_sources`` (:func:`chosen_sources`) in a
    labelling database that orders at least two candidates differently: the rows the reward stage reads from a
    database given among its ``train_files``. Logs the rankings read per source and per annotator and those
    left out, and warns when a judge and the people disagree on at least :data:`DISAGREEMENT_MIN_ITEMS` shared
    items more often than :data:`DISAGREEMENT_WARNING` allows."""
    store = LabelStore(path)
    every = store.judgements()
    present = Counter(j["source"] for j in every)
    chosen = chosen_sources(label_sources, present)
    rows, report = export_rows(store, chosen)
    annotators = Counter(row["annotator"] for row in rows)
    left_out = [f"{n} {s} rankings" for s, n in sorted(present.items()) if s not in chosen]
    log.info(
        f"{path}: label_sources {label_sources} reads the {' and '.join(chosen)} rankings: {len(rows)} rows ("
        + ", ".join(f"{a} {n}" for a, n in sorted(annotators.items()))
        + ")"
        + (f"; {report['rankings'] - report['exported']} that tie every answer left out" if report["dropped"] else "")
        + (f"; not read: {', '.join(left_out)} (label_sources [human, judge] reads both)" if left_out else "")
    )
    if present["human"] and present["judge"]:
        for judge in agreement(every).judges:
            if judge["comparisons"] >= DISAGREEMENT_MIN_ITEMS and judge["agreement"] < DISAGREEMENT_WARNING:
                log.warning(
                    f"{path}: {judge['judge']} agrees with the people on {judge['agreement']:.0%} of answer pairs "
                    f"over {judge['comparisons']} shared items (Kendall's tau {judge['kendall_tau']:.2f}); its "
                    f"rankings and theirs teach different preferences. label_sources: {list(chosen)}"
                )
    for row in rows:
        yield row["judgement"], row
