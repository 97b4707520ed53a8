"""The two `PairJudge`s (live RMs, recorded margins) and the helpers routers use to ask them.

`PoolJudge` scores pairs with the pool's RMs (live mode). `RecordedJudge` answers from the behaviour scores recorded
for one batch (simulated mode: the module builds one per batch). Routers ask through `ask_by_rm`, which groups the
pairs by the RM chosen for them so each RM used is called once per batch, on its own pairs only.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import PairBatch, PairJudge

log = logging.getLogger(__name__)

# Distinct error messages logged per RM; an error whose text varies per call (an index, a length) would otherwise
# log on every step. Past this, failures are only counted.
_MAX_LOGGED_ERRORS = 3


class PoolJudge:
    """Live judge: RM `n`'s margin `score(first) - score(second)` from `pool.score_pairs` (NaN where it abstains).

    An RM that raises an `Exception` while scoring abstains on every pair of that call: its margins are NaN, so the
    pairs get no label from it, and a pair with no label is not trained on and teaches no router anything (a learning
    router sees only finite losses of labelled pairs; `MajorityVoteRouter` gives no label to a pair no RM voted on).
    Each failed call is counted in `errors` (the module logs it as `train/rm_errors/<rm>`), and
    each distinct error (type and message) is logged as a warning once per RM with its traceback, up to
    `_MAX_LOGGED_ERRORS` per RM; later failures are only counted. An RM that fails on every call for a whole run
    therefore trains nothing and shows as an `rm_errors` count that grows every time it is asked.

    Out-of-memory errors (`torch.OutOfMemoryError`, `MemoryError`) are raised, not turned into abstentions: they mean
    the RM does not fit next to the policy at this batch size, a configuration problem that would otherwise silently
    drop every pair routed to that RM for the rest of the run. `BaseException`s that are not `Exception`s
    (`KeyboardInterrupt`, `SystemExit`) pass through as well.

    Build one judge per run and keep it: the counts live on it, per process (each rank counts its own calls), and
    start at 0 again when a run is resumed.

    Args:
        pool: The reward models, in the order of the router's `rm_names`.
    """

    def __init__(self, pool: RewardModelPool) -> None:
        self.pool = pool
        self.errors: dict[str, int] = dict.fromkeys(pool.names, 0)
        self._logged: dict[str, set[str]] = {name: set() for name in pool.names}

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        scores = self.scores(rm_index, pairs)
        return scores[:, 0] - scores[:, 1]

    def scores(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[P, 2]` RM `rm_index`'s scores of `first` and `second` (NaN where it failed)."""
        if not 0 <= rm_index < len(self.pool):
            raise IndexError(f"rm_index {rm_index} is outside the pool of {len(self.pool)} RMs {self.pool.names}")
        rm = self.pool[rm_index]
        try:
            first, second = self.pool.score_pairs(rm, pairs.prompts, pairs.first, pairs.second, pairs.references)
        except (torch.OutOfMemoryError, MemoryError):
            raise
        except Exception as error:
            self._failed(rm.name, error, len(pairs))
            return torch.full((len(pairs), 2), float("nan"))
        return torch.stack([first.detach().float().cpu(), second.detach().float().cpu()], dim=1)

    def eligible(self, pairs: PairBatch) -> Tensor:
        """`[P, N]` bool: RM `n` can judge pair `p` (`RewardModel.can_judge` of its reference)."""
        rows = [[rm.can_judge(reference) for rm in self.pool.reward_models] for reference in pairs.references]
        return torch.tensor(rows, dtype=torch.bool).reshape(len(pairs), len(self.pool))

    def _failed(self, name: str, error: Exception, num_pairs: int) -> None:
        self.errors[name] += 1
        logged = self._logged[name]
        what = f"{type(error).__name__}: {error}"
        if what in logged or len(logged) > _MAX_LOGGED_ERRORS:
            return
        logged.add(what)
        count = f"train/rm_errors/{name} = {self.errors[name]} failed calls so far"
        if len(logged) > _MAX_LOGGED_ERRORS:
            log.warning(
                "reward model %r failed again (%s); its further failures are only counted (%s)", name, what, count
            )
            return
        log.warning(
            "reward model %r raised %s; its %d pairs in this call abstain (no label, not trained on, no router "
            "update); %s; this error is not logged again",
            name,
            what,
            num_pairs,
            count,
            exc_info=error,
        )


class RecordedJudge:
    """Simulated judge: what the pool's RMs recorded for one batch of pairs.

    Given per-response scores (`[P, N, 2]`: RM `n`'s scores of pair `i`'s `first` and `second`) it answers margins and
    scores; given margins alone (`[P, N]`) it answers margins, and a score-level router (UWO) is refused. A subset of
    the batch (`PairBatch.subset`, which keeps `rows`) gets its own pairs' values.

    Args:
        recorded: `[P, N, 2]` scores or `[P, N]` margins `score(first) - score(second)`, NaN for abstentions.
    """

    def __init__(self, recorded: Tensor) -> None:
        if (
            recorded.ndim not in (2, 3)
            or not recorded.is_floating_point()
            or (recorded.ndim == 3 and recorded.shape[2] != 2)
        ):
            raise ValueError(
                f"recorded behaviour must be a float tensor of scores [P, N, 2] or margins [P, N], got shape "
                f"{list(recorded.shape)}"
            )
        recorded = recorded.detach()
        self._scores = recorded if recorded.ndim == 3 else None
        self._margins = recorded[..., 0] - recorded[..., 1] if recorded.ndim == 3 else recorded

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        return self._rows(self._margins, pairs)[:, self._check_rm(rm_index)]

    def scores(self, rm_index: int, pairs: PairBatch) -> Tensor:
        if self._scores is None:
            raise ValueError(
                "this RecordedJudge holds margins only: a score-level router (UWO) needs each response's score; "
                "build the judge from the recorded scores [P, N, 2]"
            )
        return self._rows(self._scores, pairs)[:, self._check_rm(rm_index)]

    def eligible(self, pairs: PairBatch) -> Tensor:
        """`[P, N]` bool: the RMs that judged each pair when it was recorded (a recorded NaN: it could not)."""
        return ~self._rows(self._margins, pairs).isnan()

    def _check_rm(self, rm_index: int) -> int:
        num_rms = self._margins.shape[1]
        if not 0 <= rm_index < num_rms:
            raise IndexError(f"rm_index {rm_index} is outside the {num_rms} RMs of the recorded margins")
        return rm_index

    def _rows(self, values: Tensor, pairs: PairBatch) -> Tensor:
        if pairs.rows is None:
            if len(pairs) != values.shape[0]:
                raise ValueError(
                    f"the recorded margins are for a batch of {values.shape[0]} pairs, but {len(pairs)} pairs without "
                    "`rows` were given: pass the batch itself or a `PairBatch.subset` of it"
                )
            return values
        return values[torch.as_tensor(pairs.rows, dtype=torch.long)]


def ask_eligible(judge: PairJudge, pairs: PairBatch, num_rms: int) -> Tensor:
    """`[P, N]` bool: which RMs can judge each pair; a judge without `eligible` lets every RM judge every pair."""
    eligible = getattr(judge, "eligible", None)
    if eligible is None:
        return torch.ones(len(pairs), num_rms, dtype=torch.bool)
    mask = eligible(pairs).detach().cpu().bool()
    if mask.shape != (len(pairs), num_rms):
        raise ValueError(f"judge.eligible gave shape {list(mask.shape)} for {len(pairs)} pairs of {num_rms} RMs")
    return mask


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


def ask_all_scores(judge: PairJudge, pairs: PairBatch, num_rms: int) -> Tensor:
    """`[P, N, 2]` every RM's scores of both sides of every pair (N judge calls); the judge must give `scores`."""
    scores = getattr(judge, "scores", None)
    if scores is None:
        raise ValueError(
            f"{type(judge).__name__} gives margins only: a score-level router (UWO) needs each response's score"
        )
    return torch.stack([scores(n, pairs).detach().float().cpu() for n in range(num_rms)], dim=1)


def preference(margins: Tensor) -> Tensor:
    """`[P]` float labels: +1 where `first` wins, -1 where `second` wins, 0 on a tie or an abstention (NaN)."""
    return torch.nan_to_num(torch.sign(margins.float()), nan=0.0)
