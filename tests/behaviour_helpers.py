"""Helpers shared by tests that need behaviour files of the default pool's RMs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from rmrouter.data.behaviour import NOT_JUDGED, BehaviourRecord
from rmrouter.data.records import PreferenceRecord

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "offline_router.yaml"
RM_NAMES = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["rm_names"]
DOMAINS = ["math", "safety", "koala", "oasst"]


def record_of(pair: PreferenceRecord, margins: dict[str, float]) -> BehaviourRecord:
    """A record whose RMs scored `chosen` at its margin and `rejected` at 0 (a NaN margin: the RM could not judge)."""
    return BehaviourRecord(pair, {name: (m, 0.0) if not math.isnan(m) else NOT_JUDGED for name, m in margins.items()})


# the shipped config's ood_sources: the math pairs of this source are out of distribution, next to the koala domain
OOD_MATH_SOURCE = "gsm8k/example_model_solutions/6b"


def write_behaviour(path: Path, rows: int = 48) -> None:
    """Pairs whose right RM depends on the domain: RM k is right on domain k % 4.

    Out of distribution in the shipped config: every koala row, and the math rows from row 36 on (`OOD_MATH_SOURCE`).
    """
    lines = []
    for i in range(rows):
        domain = DOMAINS[i % len(DOMAINS)]
        source = OOD_MATH_SOURCE if domain == "math" and i >= 36 else "test"
        pair = PreferenceRecord(
            f"r{i}", [{"role": "user", "content": f"{domain} question {i}"}], f"good {i}", f"bad {i}", domain, source
        )
        margin = {name: (1.0 if k == i % len(DOMAINS) else -1.0) for k, name in enumerate(RM_NAMES)}
        lines.append(json.dumps(record_of(pair, margin).to_dict()) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
