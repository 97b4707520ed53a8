"""Behaviour records: how every RM of a pool judged each labelled preference pair, and their JSON-lines file.

One JSON line per pair: the pair itself (id, domain, source, prompt, chosen, rejected, reference), `scores` (per RM
name, `[score(chosen), score(rejected)]`, or null where the RM could not judge the pair, e.g. it needs a reference
answer and the pair has none) and `agree` (per RM, whether it scored `chosen` strictly above `rejected`, as the label
says). Keeping each side's score, not only the margin, is what score-level ensembles such as UWO need.

An RM that could not judge a pair is *ineligible* for it: a router should never pick it there, and offline metrics
leave it out of that pair instead of counting it wrong. `agree` is false for it, so routing a pair to it yields no
usable label.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmrouter.data.jsonl import DataError, iter_json_lines
from rmrouter.data.records import PreferenceRecord

NOT_JUDGED = (math.nan, math.nan)
COLLECT_HINT = "`python cli.py collect --config configs/behaviour.yaml`, or your pool's collect config"
RECORD_FIELDS = ("scores", "agree")


@dataclass(frozen=True)
class BehaviourRecord:
    """One labelled pair and every RM's scores of its two sides.

    Args:
        pair: The labelled pair (`chosen` is the preferred side).
        scores: Per RM name, `(score(chosen), score(rejected))`; `NOT_JUDGED` (two NaNs) where the RM could not judge.
    """

    pair: PreferenceRecord
    scores: dict[str, tuple[float, float]]

    @property
    def margin(self) -> dict[str, float]:
        """Per RM, `score(chosen) - score(rejected)`; NaN where it could not judge."""
        return {name: chosen - rejected for name, (chosen, rejected) in self.scores.items()}

    @property
    def eligible(self) -> dict[str, bool]:
        """Per RM, whether it judged this pair (scored both sides)."""
        return {
            name: not (math.isnan(chosen) or math.isnan(rejected)) for name, (chosen, rejected) in self.scores.items()
        }

    @property
    def agree(self) -> dict[str, bool]:
        return {name: margin_agrees(margin) for name, margin in self.margin.items()}

    def restricted(self, rm_names: Sequence[str]) -> BehaviourRecord:
        """The same pair judged by the RMs `rm_names` alone (a smaller pool read from a bigger pool's file)."""
        return BehaviourRecord(self.pair, {name: self.scores[name] for name in rm_names})

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.pair.to_dict(),
            "scores": {name: None if not judged else list(self.scores[name]) for name, judged in self.eligible.items()},
            "agree": self.agree,
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> BehaviourRecord:
        """Parses one line; `agree` must be present and match the scores, so edited labels never pass silently."""
        if "scores" not in row:
            raise ValueError(
                "field 'scores' missing: written by an older rmrouter (margins only, no per-response scores); "
                "delete the file and collect it again"
            )
        pair_fields = {k: v for k, v in row.items() if k not in RECORD_FIELDS}
        if not isinstance(row["scores"], dict):
            raise ValueError(f"field 'scores': expected an object of [chosen, rejected] per RM, got {row['scores']!r}")
        record = cls(
            PreferenceRecord.from_dict(pair_fields),
            {name: _side_scores(name, value) for name, value in row["scores"].items()},
        )
        agree = row.get("agree")
        if not isinstance(agree, dict):
            raise ValueError(f"field 'agree' missing: expected one true/false label per RM of {sorted(record.scores)}")
        for name, margin in record.margin.items():
            label = agree.get(name)
            if not isinstance(label, bool):
                raise ValueError(f"field 'agree': no true/false label for RM '{name}' (got {label!r})")
            if label != margin_agrees(margin):
                raise ValueError(
                    f"field 'agree': RM '{name}' is labelled {label} but its scores {row['scores'][name]} say "
                    f"{margin_agrees(margin)}; the file was edited or written by another tool"
                )
        return record


def _side_scores(name: str, value: Any) -> tuple[float, float]:
    if value is None:
        return NOT_JUDGED
    numbers = isinstance(value, list) and len(value) == 2
    if not numbers or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
        raise ValueError(
            f"field 'scores': RM '{name}' has {value!r}, expected [score(chosen), score(rejected)] of finite numbers, "
            "or null where it could not judge the pair"
        )
    return float(value[0]), float(value[1])


def margin_agrees(margin: float) -> bool:
    """An RM agrees with the label when it ranks `chosen` strictly higher; ties and abstentions do not."""
    return not math.isnan(margin) and margin > 0


def read_behaviour(
    path: str | Path, rm_names: Sequence[str] | None = None, exact: bool = True, allow_empty: bool = False
) -> list[BehaviourRecord]:
    """Reads a behaviour file, or a shipped set's folder (`rmrouter.behaviour.shipped`); with `rm_names`, every row
    must carry exactly those RMs, or with `exact=False` at least those, and the records keep those alone (the file of
    a pool with more RMs, read as the smaller pool).

    Refused, naming the file and line: a file with no record (unless `allow_empty`, for a collection that resumes),
    a pair id that occurs twice, scores that are not finite numbers (an RM that could not judge has null)."""
    from rmrouter.behaviour.shipped import is_shipped, read_shipped

    rows = ((None, record) for record in read_shipped(path)) if is_shipped(path) else _read_lines(path)
    records = []
    seen: dict[str, str] = {}
    for line_number, record in rows:
        where = f"{path}:{line_number}" if line_number is not None else f"{path}, pair '{record.pair.id}'"
        if record.pair.id in seen:
            raise DataError(
                f"{where}: pair id '{record.pair.id}' again (first at {seen[record.pair.id]}): a pair counted twice "
                "would weigh twice in training and reports; keep one of the two lines"
            )
        seen[record.pair.id] = where
        if rm_names is not None and exact and sorted(record.scores) != sorted(rm_names):
            raise DataError(
                f"{where}: written by RMs {sorted(record.scores)}, expected {sorted(rm_names)}: "
                "use another output file for another pool"
            )
        if rm_names is not None and not exact:
            missing = [name for name in rm_names if name not in record.scores]
            if missing:
                raise DataError(
                    f"{where}: no scores of RMs {missing} (the file has {sorted(record.scores)}): "
                    "collect behaviour with a pool that has them"
                )
            record = record.restricted(rm_names)
        records.append(record)
    if not records and not allow_empty:
        raise DataError(f"{path}: no behaviour records (an empty file): collect them first ({COLLECT_HINT})")
    return records


def _read_lines(path: str | Path):
    """`(line number, record)` of each line of a behaviour file."""
    for line_number, line in iter_json_lines(path):
        try:
            row = json.loads(line)
            record = BehaviourRecord.from_dict(row)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if not line.endswith("\n"):  # only the last line can lack its newline: a write that never finished
                raise DataError(
                    f"{path}:{line_number}: the last line is unfinished ({error}), as a collection killed while "
                    "writing leaves it: run the collection again (`python cli.py collect` with its config), which "
                    "drops that line and scores its pairs again"
                ) from None
            raise DataError(f"{path}:{line_number}: not a behaviour record ({error})") from None
        yield line_number, record


def rm_names_of(path: str | Path) -> list[str]:
    """The RMs of a behaviour file's first record (or of a shipped set), in its order ([] for an empty file)."""
    from rmrouter.behaviour.shipped import is_shipped, read_manifest

    if is_shipped(path):
        return list(read_manifest(path)["rm_names"])
    for _, line in iter_json_lines(path):
        return list(json.loads(line).get("scores", {}))
    return []


def drop_torn_tail(path: Path, chunk: int = 1 << 16) -> int:
    """Cuts a last line left unfinished by a crash, so appending resumes on a clean line boundary; returns the bytes
    cut (0: the file ended on a whole line, or does not exist).

    In place, by one `truncate` after reading the file's end only: rewriting the file instead would lose every record
    if a kill came in the middle of the rewrite.
    """
    if not path.is_file():
        return 0
    with open(path, "rb+") as handle:
        end = size = handle.seek(0, os.SEEK_END)
        if size == 0 or (handle.seek(size - 1), handle.read(1))[1] == b"\n":
            return 0  # empty, or its last line is whole
        keep = 0  # where the last whole line ends: 0 when even the first line is torn
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep
