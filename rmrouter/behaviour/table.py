"""The RM x domain table of behaviour records: accuracy and coverage, majority vote, data-label routing, the ceiling.

Each RM's accuracy is over the pairs it could judge; its coverage is the share of pairs it could judge (an RM that
needs a reference answer cannot judge a pair without one: it is ineligible there, not wrong). Majority vote, data-label
routing and "any RM right" are over all pairs. Data-label routing is fitted on the same records it is scored on (in
hindsight, like the best single RM of a column), so it is an upper bound for that lookup on this data.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from rmrouter.data.behaviour import BehaviourRecord, margin_agrees, read_behaviour, rm_names_of
from rmrouter.machine import describe_machine
from rmrouter.routers.data_label import DataLabelRouting

log = logging.getLogger(__name__)

MAJORITY = "majority vote"
DATA_LABEL = "data-label routing"
ANY_RIGHT = "any RM right"
OVERALL = "overall"
COVERAGE = "coverage"


def majority_credit(margins: Sequence[float]) -> float:
    """1 if most voting RMs prefer `chosen`, 0 if most prefer `rejected`, 0.5 on a tie (a fair coin's expectation).

    Abstentions (NaN) and zero margins cast no vote.
    """
    votes = sum((m > 0) - (m < 0) for m in margins if not math.isnan(m))
    return 1.0 if votes > 0 else 0.0 if votes < 0 else 0.5


def data_label_choices(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> list[int]:
    """Per record, the RM that data-label routing fitted on these same records picks (-1: none can judge it)."""
    if not records:
        return []
    domains = [record.pair.domain for record in records]
    sources = [record.pair.source for record in records]
    eligible = torch.tensor([[record.eligible[name] for name in rm_names] for record in records])
    right = torch.tensor([[record.agree[name] for name in rm_names] for record in records])
    routing = DataLabelRouting.fit(domains, sources, right, eligible)
    return routing.route(domains, sources, eligible).tolist()


def accuracy_table(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """`table[row][column]`: rows are the RMs, majority vote, data-label routing and any-RM-right; columns the domains
    and overall. An RM's cell is over the pairs it could judge (NaN where it judged none)."""
    credits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record, routed in zip(records, data_label_choices(records, rm_names), strict=True):
        margins = [record.margin[name] for name in rm_names]
        row_credits = {name: float(margin_agrees(m)) for name, m in zip(rm_names, margins, strict=True)}
        row_credits = {name: credit for name, credit in row_credits.items() if record.eligible[name]}
        row_credits[MAJORITY] = majority_credit(margins)
        row_credits[DATA_LABEL] = float(routed >= 0 and margin_agrees(margins[routed]))
        row_credits[ANY_RIGHT] = float(any(margin_agrees(m) for m in margins))
        for row, credit in row_credits.items():
            credits[row][record.pair.domain].append(credit)
            credits[row][OVERALL].append(credit)
    columns = [*domain_counts(records), OVERALL]
    return {
        row: {column: _mean(credits[row][column]) for column in columns}
        for row in [*rm_names, MAJORITY, DATA_LABEL, ANY_RIGHT]
    }


def coverage_table(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """`table[rm][column]`: the share of the column's pairs the RM could judge."""
    judged: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for name in rm_names:
            for column in (record.pair.domain, OVERALL):
                judged[name][column].append(float(record.eligible[name]))
    columns = [*domain_counts(records), OVERALL]
    return {name: {column: _mean(judged[name][column]) for column in columns} for name in rm_names}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def domain_counts(records: Sequence[BehaviourRecord]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.pair.domain] += 1
    return dict(counts)


def format_table(records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> str:
    """Markdown: accuracies in percent (the best single RM per column in bold), then the RMs' coverage in percent."""
    table, coverage = accuracy_table(records, rm_names), coverage_table(records, rm_names)
    counts = domain_counts(records)
    columns = sorted(counts) + [OVERALL]
    counts[OVERALL] = len(records)
    header = ["| RM | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines = [*header, "| pairs | " + " | ".join(str(counts[c]) for c in columns) + " |"]
    best = {
        c: max((table[name][c] for name in rm_names if not math.isnan(table[name][c])), default=math.nan)
        for c in columns
    }
    for row in [*rm_names, MAJORITY, DATA_LABEL, ANY_RIGHT]:
        cells = []
        for column in columns:
            value = _percent(table[row][column])
            cells.append(f"**{value}**" if row in rm_names and table[row][column] == best[column] else value)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"{COVERAGE.capitalize()} (%): the share of each column's pairs the RM could judge.", "", *header]
    for name in rm_names:
        lines.append(f"| {name} | " + " | ".join(_percent(coverage[name][c]) for c in columns) + " |")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def write_table(records: list[BehaviourRecord], rm_names: list[str], path: Path, source: Path, command: str) -> None:
    """Writes the markdown table of `records` to `path`, saying it comes from `source` by `command`."""
    markdown = format_table(records, rm_names)
    print(markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Reward-model pool: accuracy (%) by domain\n\n"
        f"Share of labelled pairs each RM ranks as the label does, from `{source}`; written on {describe_machine()}.\n"
        f"Written by {command}; do not edit by hand: rerun it.\n"
        "An RM's accuracy is over the pairs it could judge, its coverage (second table) the share it could judge. "
        "Majority vote gives half credit on a tied vote; an RM that could not judge casts no vote. Data-label routing "
        "sends each pair to the RM best on its domain (else its dataset) over these same pairs, so like the bold best "
        "single RM it is chosen in hindsight. Any RM right is the routing ceiling. The standard error of a column's "
        "accuracy p over n pairs is sqrt(p (1 - p) / n): about 2 points at n = 500, 5 at n = 100.\n\n"
        f"{markdown}\n",
        encoding="utf-8",
    )
    log.info("wrote %s", path)


def write_behaviour_table(behaviour: Path, output: Path, rm_names: list[str] | None = None) -> None:
    """Writes the RM x domain table of an existing behaviour file, for all its RMs or a smaller pool of them.

    Args:
        behaviour: The behaviour file (JSON lines, from `python cli.py collect`).
        output: The markdown file to write.
        rm_names: The RMs to tabulate, in this order (majority vote, data-label routing and the ceiling use these
            alone); None: all of the file's.
    """
    names = list(rm_names) if rm_names is not None else rm_names_of(behaviour)
    records = read_behaviour(behaviour, names, exact=False)
    chosen = f" --rm_names '[{', '.join(names)}]'" if rm_names is not None else ""
    command = f"`python cli.py table --behaviour {behaviour} --output {output}{chosen}`"
    log.info("%s: %d pairs, RMs %s", behaviour, len(records), names)
    write_table(records, names, Path(output), Path(behaviour), command)
