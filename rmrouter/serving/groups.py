"""Completions gathered per prompt: the groups a router routes as one pair each (`rmrouter.serving.scorer`).

Trainers outside rmrouter (TRL's `GRPOTrainer` and `OnlineDPOTrainer`, OpenRLHF, verl) hand a reward function flat
lists: every completion with its prompt. `CompletionGroups.of` gathers the completions of each prompt into a group
(a GRPO group; an Online DPO pair), so one RM can score the whole group and the rewards inside it share one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rmrouter.data.records import Message
from rmrouter.routers.base import PairBatch


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
