"""One RM per prompt group: `RoutedScorer` asks an rmrouter `Router` which RM scores each group of completions.

The router sees each group as one pair (its prompt, its first two completions, its label and reference), exactly as
it sees a pair in `OnlineDPOModule`, and `GroupJudge` answers its questions by scoring the whole group with the RM it
asks for. A router that asks every RM (majority vote, UWO) gets every RM's scores, and the group's reward is then their
mean on a common scale (each RM z-scored within the group). A trainer's losses for an earlier routing teach the router
through `RoutedScorer.learn`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import PairBatch, Router, Routing
from rmrouter.routers.decisions import uwo_scores
from rmrouter.routers.judges import PoolJudge
from rmrouter.serving.groups import CompletionGroups


class GroupJudge(PoolJudge):
    """A router's judge over `CompletionGroups`: asked for RM `n`'s margins on some groups, it scores every completion
    of those groups with RM `n` (one `score` call for all of them) and keeps the scores, so each (group, RM) is scored
    once however often the router asks. Eligibility, margins and failures are `PoolJudge`'s: an RM that raises an
    `Exception` abstains on the groups of that call (NaN scores; the groups get no reward) and is counted in `errors`;
    out-of-memory errors are raised (a configuration problem).
    """

    def __init__(self, pool: RewardModelPool, groups: CompletionGroups) -> None:
        super().__init__(pool)
        self.groups = groups
        self.scored: dict[tuple[int, int], Tensor] = {}  # (group, rm) -> [group size] scores

    def group_scores(self, rm_index: int, groups: Sequence[int]) -> list[Tensor]:
        """RM `rm_index`'s scores of every completion of each of `groups` (scoring those not scored yet)."""
        todo = [g for g in dict.fromkeys(groups) if (g, rm_index) not in self.scored]
        if todo:
            rm = self.pool[rm_index]
            prompts = [self.groups.prompts[g] for g in todo for _ in self.groups.completions[g]]
            responses = [text for g in todo for text in self.groups.completions[g]]
            references = [self.groups.references[g] for g in todo for _ in self.groups.completions[g]]
            try:
                scores = rm.score(prompts, responses, references).detach().float().cpu()
            except (torch.OutOfMemoryError, MemoryError):
                raise
            except Exception as error:  # the RM abstains on these groups
                self._failed(rm.name, error, len(todo))
                scores = torch.full((len(responses),), float("nan"))
            for g, part in zip(todo, scores.split([len(self.groups.completions[g]) for g in todo]), strict=True):
                self.scored[(g, rm_index)] = part
        return [self.scored[(g, rm_index)] for g in groups]

    def scores(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[P, 2]` RM `rm_index`'s scores of each group's pair (its first two completions)."""
        groups = self._groups_of(pairs)
        return torch.stack(
            [torch.stack([s[0], s[1 if len(s) > 1 else 0]]) for s in self.group_scores(rm_index, groups)]
        )

    def _groups_of(self, pairs: PairBatch) -> list[int]:
        return list(range(len(pairs))) if pairs.rows is None else list(pairs.rows)


@dataclass
class GroupRewards:
    """What scoring a set of groups gave.

    Attributes:
        rewards: One reward per completion, in the flat lists' order; None where the RM could not judge it.
        rm_index: `[G]` the RM that scored each group; -1 where several did (an ensemble router) or none could.
        asked: Each group's RMs asked to score it.
        scored: Completions each RM scored, by name.
        cost: What those calls cost in the pool's unit (each RM's cost per pair, per two completions); None without
            declared costs.
        errors: Failed calls per RM.
        routing: The router's decision, kept to learn from the trainer's losses later (`RoutedScorer.learn`).
    """

    rewards: list[float | None]
    rm_index: Tensor
    asked: list[list[int]]
    scored: dict[str, int]
    cost: float | None
    errors: dict[str, int] = field(default_factory=dict)
    routing: Routing | None = None


class RoutedScorer:
    """Scores completions with one RM per prompt group, chosen by `router` among the RMs of `pool`.

    The router routes from what it holds (its prior, its lookup) and learns only what `learn` feeds it: a trainer's
    per-group losses for an earlier routing. Without them a router with online updates draws from its prior, and
    `online_updates: false` makes it deterministic. Scoring and learning take turns (a lock), so a router's state is
    never read while it changes. Calls and cost are counted per RM over the scorer's life (`calls`, `cost_total`).

    Args:
        pool: The reward models.
        router: Any rmrouter router; it is connected to the pool here.
    """

    def __init__(self, pool: RewardModelPool, router: Router) -> None:
        self.pool, self.router = pool, router
        router.connect_pool(pool.names, costs=pool.costs)
        self.calls: dict[str, int] = dict.fromkeys(pool.names, 0)  # completions scored per RM
        self.cost_total = 0.0
        self.groups_routed = 0
        self.groups_learned = 0
        self.lock = threading.Lock()

    def score(self, groups: CompletionGroups) -> GroupRewards:
        """Routes each group and returns its completions' rewards, in the flat order the groups were built from."""
        with self.lock:
            return self._score(groups)

    def learn(self, routing: Routing, losses: Sequence[float | None]) -> int:
        """Feeds the trainer's loss for each group of an earlier routing back to the router (`Router.observe`: lower
        is better, as a DPO loss; None or NaN for a group not trained on). Returns how many groups it learned from."""
        if len(losses) != len(routing.rm_index):
            raise ValueError(f"got {len(losses)} losses for {len(routing.rm_index)} prompt groups: one per group")
        values = torch.tensor([float("nan") if loss is None else float(loss) for loss in losses], dtype=torch.float64)
        with self.lock:
            self.router.observe(routing, values)
        learned = int((torch.isfinite(values) & (routing.preference != 0)).sum())
        self.groups_learned += learned
        return learned

    def _score(self, groups: CompletionGroups) -> GroupRewards:
        judge = GroupJudge(self.pool, groups)
        routing = self.router.route(groups.as_pairs(), judge)
        rewards: list[float | None] = [None] * groups.size
        asked = [[n for n in range(len(self.pool)) if (g, n) in judge.scored] for g in range(len(groups))]
        for g, rm in enumerate(routing.rm_index.tolist()):
            if rm >= 0:
                values = judge.group_scores(rm, [g])[0]
            elif asked[g]:  # several RMs were asked (an ensemble router): the mean of their z-scores in the group
                values = uwo_scores(torch.stack([judge.group_scores(n, [g])[0] for n in asked[g]], dim=1), 0.0).float()
            else:  # no RM could judge the group
                continue
            for row, value in zip(groups.rows[g], values.tolist(), strict=True):
                rewards[row] = None if value != value else float(value)  # NaN: no reward
        scored = calls_per_rm(self.pool, groups, asked)
        cost = call_cost(self.pool, scored)
        if cost is not None:
            self.cost_total += cost
        for name, count in scored.items():
            self.calls[name] += count
        self.groups_routed += len(groups)
        return GroupRewards(rewards, routing.rm_index.clone(), asked, scored, cost, dict(judge.errors), routing)


def routing_part(routing: Routing, groups: slice) -> Routing:
    """The decision for some of a routing's groups (a request's share of a merged batch)."""
    context = routing.context
    if isinstance(context, Tensor):
        context = context[groups]
    rm_index = routing.rm_index[groups]
    return Routing(routing.preference[groups], rm_index, rm_calls=len(rm_index), context=context)


def calls_per_rm(pool: RewardModelPool, groups: CompletionGroups, asked: Sequence[Sequence[int]]) -> dict[str, int]:
    """Completions each RM scored: every completion of each group it was asked about and can judge."""
    calls = dict.fromkeys(pool.names, 0)
    for g, rms in enumerate(asked):
        for n in rms:
            if pool[n].can_judge(groups.references[g]):
                calls[pool.names[n]] += len(groups.completions[g])
    return calls


def call_cost(pool: RewardModelPool, calls: dict[str, int]) -> float | None:
    """What `calls` completions per RM cost in the pool's unit (its cost per call is per pair: two completions)."""
    if pool.costs is None:
        return None
    return sum(count * float(pool.costs[n]) / 2 for n, count in enumerate(calls.values()))
