"""Routing groups of completions: one RM per prompt's group, so the rewards inside a group come from one scale.

Trainers outside rmrouter (TRL's `GRPOTrainer` and `OnlineDPOTrainer`, OpenRLHF, verl) hand a reward function flat
lists: every completion with its prompt. `CompletionGroups.of` gathers the completions of each prompt into a group
(a GRPO group; an Online DPO pair), and `RoutedScorer` asks an rmrouter `Router` which RM scores each group. The router
sees each group as one pair (its prompt, its first two completions, its label and reference), exactly as it sees a
pair in `OnlineDPOModule`, and `GroupJudge` answers its questions by scoring the whole group with the RM it asks for.
A router that asks every RM (majority vote, UWO) gets every RM's scores, and the group's reward is then their mean on
a common scale (each RM z-scored within the group).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rmrouter.data.records import Message
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import PairBatch, Router

log = logging.getLogger(__name__)


def as_prompt(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt as chat messages: a plain string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def as_text(completion: str | Sequence[Message]) -> str:
    """A completion's text: a plain string, or the content of a conversational completion's last message."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    return str(completion[-1].get("content", ""))


@dataclass
class CompletionGroups:
    """The completions of each prompt, gathered from flat per-completion lists.

    Attributes:
        prompts: Each group's prompt, as chat messages.
        completions: Each group's completion texts.
        rows: Each group's positions in the flat lists, so rewards go back where they came from.
        references: Each group's reference answer (None: none), for RMs that need one.
        domains: Each group's data label (its task; "" when unknown), for routing by label.
        sources: Each group's data source, where known.
    """

    prompts: list[list[Message]]
    completions: list[list[str]]
    rows: list[list[int]]
    references: list[str | None]
    domains: list[str]
    sources: list[str] | None = None

    @classmethod
    def of(
        cls,
        prompts: Sequence[str | Sequence[Message]],
        completions: Sequence[str | Sequence[Message]],
        references: Sequence[str | None] | None = None,
        domains: Sequence[str | None] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> CompletionGroups:
        """Groups the completions by prompt, in the order each prompt first appears; a group's reference, label and
        source are those of its first completion."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions: one prompt each")
        for name, column in (("references", references), ("domains", domains), ("sources", sources)):
            if column is not None and len(column) != len(prompts):
                raise ValueError(f"got {len(column)} {name} for {len(prompts)} completions: one each, or none")
        index: dict[str, int] = {}
        groups = cls([], [], [], [], [], None if sources is None else [])
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            key = repr(prompt)
            if key not in index:
                index[key] = len(groups.prompts)
                groups.prompts.append(as_prompt(prompt))
                groups.completions.append([])
                groups.rows.append([])
                groups.references.append(None if references is None else references[row])
                groups.domains.append("" if domains is None or domains[row] is None else str(domains[row]))
                if sources is not None:
                    groups.sources.append("" if sources[row] is None else str(sources[row]))
            group = index[key]
            groups.completions[group].append(as_text(completion))
            groups.rows[group].append(row)
        return groups

    @classmethod
    def concat(cls, parts: Sequence[CompletionGroups]) -> CompletionGroups:
        """Every part's groups, in order, as one set (a part's groups stay its own, even for a prompt two parts
        share); flat positions run on from one part to the next."""
        merged = cls([], [], [], [], [], [] if all(p.sources is not None for p in parts) else None)
        offset = 0
        for part in parts:
            merged.prompts += part.prompts
            merged.completions += part.completions
            merged.rows += [[offset + row for row in rows] for rows in part.rows]
            merged.references += part.references
            merged.domains += part.domains
            if merged.sources is not None:
                merged.sources += part.sources
            offset += part.size
        return merged

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def size(self) -> int:
        """Completions in all groups."""
        return sum(len(group) for group in self.completions)

    def as_pairs(self) -> PairBatch:
        """One pair per group, as a router reads it: the prompt and the first two completions (the first twice for
        a group of one)."""
        second = [group[1] if len(group) > 1 else group[0] for group in self.completions]
        return PairBatch(
            prompts=self.prompts,
            first=[group[0] for group in self.completions],
            second=second,
            references=self.references,
            domains=self.domains,
            sources=self.sources,
        )


class GroupJudge:
    """A router's judge over `CompletionGroups`: asked for RM `n`'s margins on some groups, it scores every completion
    of those groups with RM `n` (one `score` call for all of them) and keeps the scores, so each (group, RM) is scored
    once however often the router asks.

    An RM that raises an `Exception` abstains on the groups of that call (NaN scores; the groups get no reward), is
    counted in `errors` and logged once per distinct error; out-of-memory errors are raised (a configuration problem).
    """

    def __init__(self, pool: RewardModelPool, groups: CompletionGroups) -> None:
        self.pool, self.groups = pool, groups
        self.scored: dict[tuple[int, int], Tensor] = {}  # (group, rm) -> [group size] scores
        self.errors: dict[str, int] = dict.fromkeys(pool.names, 0)
        self._logged: set[str] = set()

    def eligible(self, pairs: PairBatch) -> Tensor:
        """`[P, N]` bool: RM `n` can judge group `p` (`RewardModel.can_judge` of its reference)."""
        rows = [[rm.can_judge(reference) for rm in self.pool.reward_models] for reference in pairs.references]
        return torch.tensor(rows, dtype=torch.bool).reshape(len(pairs), len(self.pool))

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
                self._failed(rm.name, error)
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

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        scores = self.scores(rm_index, pairs)
        return scores[:, 0] - scores[:, 1]

    def _groups_of(self, pairs: PairBatch) -> list[int]:
        return list(range(len(pairs))) if pairs.rows is None else list(pairs.rows)

    def _failed(self, name: str, error: Exception) -> None:
        self.errors[name] += 1
        what = f"{name}: {type(error).__name__}: {error}"
        if what not in self._logged:
            self._logged.add(what)
            log.warning("reward model %s failed; its groups get no reward", what, exc_info=error)


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
    """

    rewards: list[float | None]
    rm_index: Tensor
    asked: list[list[int]]
    scored: dict[str, int]
    cost: float | None
    errors: dict[str, int] = field(default_factory=dict)


class RoutedScorer:
    """Scores completions with one RM per prompt group, chosen by `router` among the RMs of `pool`.

    The router routes from what it holds (its prior, its lookup): nothing here calls its `observe`, so a router with
    online updates draws from its prior, and `online_updates: false` makes it deterministic. Calls and cost are counted
    per RM over the scorer's life (`calls`, `cost_total`).

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

    def score(self, groups: CompletionGroups) -> GroupRewards:
        """Routes each group and returns its completions' rewards, in the flat order the groups were built from."""
        judge = GroupJudge(self.pool, groups)
        routing = self.router.route(groups.as_pairs(), judge)
        rewards: list[float | None] = [None] * groups.size
        asked = [[n for n in range(len(self.pool)) if (g, n) in judge.scored] for g in range(len(groups))]
        for g, rm in enumerate(routing.rm_index.tolist()):
            if rm >= 0:
                values = judge.group_scores(rm, [g])[0]
            elif asked[g]:  # several RMs were asked (an ensemble router): the mean of their z-scores in the group
                values = ensemble_rewards([judge.group_scores(n, [g])[0] for n in asked[g]])
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
        return GroupRewards(rewards, routing.rm_index.clone(), asked, scored, cost, dict(judge.errors))


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


def ensemble_rewards(columns: Sequence[Tensor]) -> Tensor:
    """Per completion, the mean over RMs of each RM's score z-scored within the group (an RM without spread there, or
    that abstained, adds nothing); NaN where no RM scored it."""
    scores = torch.stack(list(columns), dim=1).double()  # [K, N]
    judged = ~scores.isnan()
    mean = scores.nan_to_num().sum(0) / judged.sum(0).clamp_min(1)
    centred = torch.where(judged, scores - mean, 0.0)
    std = (centred.square().sum(0) / judged.sum(0).clamp_min(1)).sqrt()
    z = torch.where(std > 0, centred / std.clamp_min(1e-300), 0.0)
    count = judged.sum(1)
    return torch.where(count > 0, z.sum(1) / count.clamp_min(1), torch.nan).float()
