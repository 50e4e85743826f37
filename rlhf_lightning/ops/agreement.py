"""Agreement between two rankings of the same candidates (ties allowed): what the labelling export reports for
items that several annotators (people or judges) ranked.

A ranking is a mapping ``candidate -> rank`` (1 = best; equal ranks are ties). Both functions compare the
candidates the two rankings share, over every unordered pair of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _shared_pairs(a: Mapping, b: Mapping) -> list[tuple[int, int]]:
    """``(sign in a, sign in b)`` of ``rank[i] - rank[j]`` for every pair ``i < j`` of shared candidates."""
    shared = sorted(set(a) & set(b), key=str)
    return [(_sign(a[i] - a[j]), _sign(b[i] - b[j])) for i, j in combinations(shared, 2)]


def pairwise_agreement(a: Mapping, b: Mapping) -> float:
    """Fraction of candidate pairs that the two rankings order the same way, a tie agreeing only with a tie.

    Returns NaN when they share fewer than two candidates. Used, for example, in Stiennon et al. (2020),
    "Learning to summarize from human feedback", to report labeler-labeler agreement.
    """
    pairs = _shared_pairs(a, b)
    if not pairs:
        return math.nan
    return sum(x == y for x, y in pairs) / len(pairs)


def kendall_tau_b(a: Mapping, b: Mapping) -> float:
    """Kendall's tau-b between two rankings with ties, in [-1, 1].

    ``tau_b = (C - D) / sqrt((P - T_a) (P - T_b))`` with ``C``/``D`` the concordant/discordant pairs, ``P``
    all pairs and ``T_a``/``T_b`` the pairs tied in ``a``/``b`` (Kendall 1945, "The treatment of ties in
    ranking problems"; the definition ``scipy.stats.kendalltau`` uses by default). NaN when one ranking ties
    every shared candidate or they share fewer than two.
    """
    pairs = _shared_pairs(a, b)
    concordant = sum(x * y > 0 for x, y in pairs)
    discordant = sum(x * y < 0 for x, y in pairs)
    untied_a = sum(x != 0 for x, _ in pairs)
    untied_b = sum(y != 0 for _, y in pairs)
    if untied_a == 0 or untied_b == 0:
        return math.nan
    return (concordant - discordant) / math.sqrt(untied_a * untied_b)


def ranks_from_groups(groups: list[list]) -> dict:
    """``{candidate: rank}`` from candidates grouped best to worst (a group holds tied candidates):
    ``[[3], [1, 4], [2]]`` -> ``{3: 1, 1: 2, 4: 2, 2: 3}``."""
    return {candidate: rank for rank, group in enumerate(groups, start=1) for candidate in group}


def groups_from_scores(scores: Mapping) -> list[list]:
    """Candidates grouped best to worst by score (higher is better; equal scores are ties), each group in
    the mapping's order: ``{7: 0.5, 8: 2.0, 9: 0.5}`` -> ``[[8], [7, 9]]``."""
    order = sorted(set(scores.values()), reverse=True)
    return [[c for c, s in scores.items() if s == value] for value in order]
