"""The RM x domain accuracy table of behaviour records, with majority vote and the routing ceiling."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from rmrouter.behaviour.records import BehaviourRecord, margin_agrees

MAJORITY = "majority vote"
ANY_RIGHT = "any RM right"
OVERALL = "overall"


def majority_credit(margins: Sequence[float]) -> float:
    """1 if most voting RMs prefer `chosen`, 0 if most prefer `rejected`, 0.5 on a tie (a fair coin's expectation).

    Abstentions (NaN) and zero margins cast no vote.
    """
    votes = sum((m > 0) - (m < 0) for m in margins if not math.isnan(m))
    return 1.0 if votes > 0 else 0.0 if votes < 0 else 0.5


def accuracy_table(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """`table[row][column]`: rows are the RMs, majority vote and any-RM-right; columns the domains and overall."""
    credits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        margins = [record.margin[name] for name in rm_names]
        row_credits = {name: float(margin_agrees(m)) for name, m in zip(rm_names, margins, strict=True)}
        row_credits[MAJORITY] = majority_credit(margins)
        row_credits[ANY_RIGHT] = float(any(margin_agrees(m) for m in margins))
        for row, credit in row_credits.items():
            credits[row][record.pair.domain].append(credit)
            credits[row][OVERALL].append(credit)
    return {row: {column: sum(v) / len(v) for column, v in columns.items()} for row, columns in credits.items()}


def domain_counts(records: Sequence[BehaviourRecord]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.pair.domain] += 1
    return dict(counts)


def format_table(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> str:
    """A markdown table of accuracies in percent; the best single RM per column is in bold."""
    table = accuracy_table(records, rm_names)
    counts = domain_counts(records)
    columns = sorted(counts) + [OVERALL]
    counts[OVERALL] = len(records)
    lines = [
        "| RM | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        "| pairs | " + " | ".join(str(counts[c]) for c in columns) + " |",
    ]
    best = {c: max(table[name][c] for name in rm_names) for c in columns}
    for row in [*rm_names, MAJORITY, ANY_RIGHT]:
        cells = []
        for column in columns:
            value = f"{100 * table[row][column]:.1f}"
            cells.append(f"**{value}**" if row in rm_names and table[row][column] == best[column] else value)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
