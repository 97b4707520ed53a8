"""The real pool of LLM judges on LLMBar: what each verdict costs, how often its two orders agree, and how right it is
then: `docs/llmbar_pool.md`.

    python benchmarks/llmbar_pool.py --output docs/llmbar_pool.md

Per judge of `configs/pool/llmbar.yaml`, over the pairs `LLMBarPairs` gives (both orders judged):
- **orders agree**: the share of pairs whose two presentation orders chose the same output: the judge's own per-pair
  confidence, known before any label, which a cascade can use;
- **right when they agree**, and the **first-shown output wins** share of the pairs where they disagree (1.0 is pure
  position bias, 0.5 none);
- **accuracy** as the behaviour records count it (a disagreement is a tie, not agreeing with the label), and with a
  disagreement counted as a coin flip (half right);
- **cost**: USD per 1,000 verdicts (both orders) by the pool's cost model (`rmrouter/reward_models/judge_cost.py`),
  its mean over the pairs, and where its rates come from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml
from common import write_report

from rmrouter.commands import instantiate
from rmrouter.data.llmbar import ORDERS, LLMBarPairs, read_verdicts, text_key
from rmrouter.reward_models import RewardModelPool
from rmrouter.stats import proportion_se

ROOT = Path(__file__).resolve().parents[1]


def orders_of(verdicts: dict, pair, judge: str) -> tuple[str, str] | None:
    """The judge's two winners as `chosen`/`rejected` (`c` or `r`), swap=False first; None without both verdicts."""
    instruction = pair.prompt[0]["content"]
    found, names = verdicts.get(text_key(instruction, pair.chosen, pair.rejected)), {"1": "c", "2": "r"}
    if found is None:
        found, names = verdicts.get(text_key(instruction, pair.rejected, pair.chosen)), {"1": "r", "2": "c"}
    winners = [((found or {}).get(judge) or {}).get(order) for order in ORDERS]
    return None if None in winners else tuple(names[winner] for winner in winners)


def judge_row(rm, pairs, verdicts) -> str:
    judged = [(pair, orders_of(verdicts, pair, rm.judge)) for pair in pairs]
    judged = [(pair, orders) for pair, orders in judged if orders is not None]
    agree = [orders for _, orders in judged if orders[0] == orders[1]]
    split = [(pair, orders) for pair, orders in judged if orders[0] != orders[1]]
    right_when_agree = sum(orders[0] == "c" for orders in agree) / len(agree)
    # in a disagreement one order picked each side; position bias picks the first-shown output in both orders, so
    # output 1 in swap=False (shown first) and output 2 in swap=True
    first_shown = [orders[0] == _first_label(verdicts, pair) for pair, orders in split]
    n = len(judged)
    strict = len([o for o in agree if o[0] == "c"]) / n
    half = strict + 0.5 * len(split) / n
    costs = [rm.cost_per_pair(pair.prompt, pair.chosen, pair.rejected) for pair, _ in judged]
    position, usd = sum(first_shown) / max(len(split), 1), 1000 * statistics.mean(costs)
    return (f"| {rm.name} | {n} | {len(agree) / n:.1%} | {right_when_agree:.1%} | {position:.1%} of {len(split)} | "
            f"{strict:.1%} ± {proportion_se(strict, n):.1%} | {half:.1%} | {usd:.2f} |")  # fmt: skip


def _first_label(verdicts: dict, pair) -> str:
    """Which side (`c` or `r`) the file shows first in its swap=False order: its output 1."""
    return "c" if text_key(pair.prompt[0]["content"], pair.chosen, pair.rejected) in verdicts else "r"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "configs" / "pool" / "llmbar.yaml")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    pool = instantiate(yaml.safe_load(args.pool.read_text()), RewardModelPool)
    pairs = LLMBarPairs().load()
    verdicts = read_verdicts()
    header = [
        "| judge | pairs judged in both orders | orders agree | right when they agree | first-shown output wins "
        "when they disagree | accuracy (a disagreement: wrong) ± se | accuracy (a disagreement: half) | USD per 1,000 "
        "verdicts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [judge_row(rm, pairs, verdicts) for rm in pool.reward_models]
    sources = "\n".join(f"- `{rm.name}` ({rm.cost.unit}s): {rm.cost.source.strip()}" for rm in pool.reward_models)
    table = "\n".join([*header, *rows]) + "\n\nWhere each judge's rates come from:\n\n" + sources
    print(table)
    if args.output is not None:
        notes = (f"\n{len(pairs)} pairs of `LLMBarPairs` (rmrouter/data/llmbar.py), the pool of `{args.pool.name}`. "
                 "Costs count each call's prompt (LLMBar's templates filled with the pair) and an assumed output, "
                 "in the unit the provider bills; tokens are counted with SmolLM2's tokenizer, an estimate of the "
                 "judges' own.")  # fmt: skip
        write_report(args.output, "The real pool: LLMBar's LLM judges, their confidence and their cost", notes, table)


if __name__ == "__main__":
    sys.exit(main())
