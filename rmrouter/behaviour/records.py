"""Behaviour records: how every RM of a pool judged each labelled preference pair.

One JSON line per pair: the pair itself (id, domain, source, prompt, chosen, rejected, reference) and, per RM
name, `agree` (the RM scored `chosen` strictly above `rejected`, as the label says) and `margin`
(`score(chosen) - score(rejected)`, null when the RM abstained). An abstaining RM does not agree: routing a pair
to it yields no usable label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmrouter.data.jsonl import DataError, iter_json_lines
from rmrouter.data.records import PreferenceRecord


@dataclass(frozen=True)
class BehaviourRecord:
    pair: PreferenceRecord
    margin: dict[str, float]  # NaN = abstained

    @property
    def agree(self) -> dict[str, bool]:
        return {name: margin_agrees(margin) for name, margin in self.margin.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.pair.to_dict(),
            "agree": self.agree,
            "margin": {name: None if math.isnan(m) else m for name, m in self.margin.items()},
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> BehaviourRecord:
        """Parses one line; `agree` must be present and match the margins, so edited labels never pass silently."""
        pair_fields = {k: v for k, v in row.items() if k not in ("agree", "margin")}
        margin = {name: _margin_value(name, m) for name, m in row["margin"].items()}
        agree = row.get("agree")
        if not isinstance(agree, dict):
            raise ValueError(f"field 'agree' missing: expected one true/false label per RM of {sorted(margin)}")
        for name, value in margin.items():
            label = agree.get(name)
            if not isinstance(label, bool):
                raise ValueError(f"field 'agree': no true/false label for RM '{name}' (got {label!r})")
            if label != margin_agrees(value):
                raise ValueError(
                    f"field 'agree': RM '{name}' is labelled {label} but its margin {row['margin'][name]} says "
                    f"{margin_agrees(value)}; the file was edited or written by another tool"
                )
        return cls(PreferenceRecord.from_dict(pair_fields), margin)


def _margin_value(name: str, value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field 'margin': RM '{name}' has {value!r}, expected a number or null")
    return float(value)


def margin_agrees(margin: float) -> bool:
    """An RM agrees with the label when it ranks `chosen` strictly higher; ties and abstentions do not."""
    return not math.isnan(margin) and margin > 0


def read_behaviour(path: str | Path, rm_names: Sequence[str] | None = None) -> list[BehaviourRecord]:
    """Reads a behaviour file; with `rm_names`, every row must carry exactly those RMs."""
    records = []
    for line_number, line in iter_json_lines(path):
        try:
            row = json.loads(line)
            record = BehaviourRecord.from_dict(row)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}:{line_number}: not a behaviour record ({error})") from None
        if rm_names is not None and sorted(record.margin) != sorted(rm_names):
            raise DataError(
                f"{path}:{line_number}: written by RMs {sorted(record.margin)}, expected {sorted(rm_names)}: "
                "use another output file for another pool"
            )
        records.append(record)
    return records


def drop_torn_tail(path: Path) -> None:
    """Cuts a last line left unfinished by a crash, so appending resumes on a clean line boundary."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    path.write_bytes(data[: data.rfind(b"\n") + 1])
