"""The two `PairJudge`s (live RMs, recorded margins) and the helpers routers use to ask them.

`PoolJudge` scores pairs with the pool's RMs (live mode). `RecordedJudge` answers from the behaviour margins recorded
for one batch (simulated mode: the module builds one per batch). Routers ask through `ask_by_rm`, which groups the
pairs by the RM chosen for them so each RM used is called once per batch, on its own pairs only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import PairBatch, PairJudge


class PoolJudge:
    """Live judge: RM `n`'s margin `score(first) - score(second)` from `pool.score_pairs` (NaN where it abstains).

    Args:
        pool: The reward models, in the order of the router's `rm_names`.
    """

    def __init__(self, pool: RewardModelPool) -> None:
        self.pool = pool

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        if not 0 <= rm_index < len(self.pool):
            raise IndexError(f"rm_index {rm_index} is outside the pool of {len(self.pool)} RMs {self.pool.names}")
        first, second = self.pool.score_pairs(
            self.pool[rm_index], pairs.prompts, pairs.first, pairs.second, pairs.references
        )
        return (first - second).detach().float()


class RecordedJudge:
    """Simulated judge: the recorded margins of one batch, `margins[i, n]` for pair `i` of that batch and RM `n`.

    A subset of the batch (`PairBatch.subset`, which keeps `rows`) gets the margins of its own pairs.

    Args:
        margins: `[P, N]` recorded margins `score(first) - score(second)` of the batch's pairs, NaN for abstentions.
    """

    def __init__(self, margins: Tensor) -> None:
        if margins.ndim != 2 or not margins.is_floating_point():
            raise ValueError(f"recorded margins must be a float tensor [P, N], got shape {list(margins.shape)}")
        self._margins = margins.detach()

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        num_pairs, num_rms = self._margins.shape
        if not 0 <= rm_index < num_rms:
            raise IndexError(f"rm_index {rm_index} is outside the {num_rms} RMs of the recorded margins")
        if pairs.rows is None:
            if len(pairs) != num_pairs:
                raise ValueError(
                    f"the recorded margins are for a batch of {num_pairs} pairs, but {len(pairs)} pairs without "
                    "`rows` were given: pass the batch itself or a `PairBatch.subset` of it"
                )
            return self._margins[:, rm_index]
        return self._margins[torch.as_tensor(pairs.rows, dtype=torch.long), rm_index]


def ask_by_rm(judge: PairJudge, pairs: PairBatch, rm_index: Tensor) -> Tensor:
    """`[P]` margins, pair `i`'s from RM `rm_index[i]`: one judge call per distinct RM, on the pairs routed to it."""
    margins = torch.full((len(pairs),), float("nan"))
    for n in rm_index.unique().tolist():
        rows = torch.nonzero(rm_index == n).flatten()
        margins[rows] = judge.margins(int(n), pairs.subset(rows.tolist())).detach().float().cpu()
    return margins


def ask_all(judge: PairJudge, pairs: PairBatch, num_rms: int) -> Tensor:
    """`[P, N]` margins of every RM for every pair (N judge calls)."""
    return torch.stack([judge.margins(n, pairs).detach().float().cpu() for n in range(num_rms)], dim=1)


def preference(margins: Tensor) -> Tensor:
    """`[P]` float labels: +1 where `first` wins, -1 where `second` wins, 0 on a tie or an abstention (NaN)."""
    return torch.nan_to_num(torch.sign(margins.float()), nan=0.0)
