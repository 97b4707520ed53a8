"""The task-aware offline router's artifact, consumed by `TaskBayesianRouter`: per-task RM reliabilities and what
tells a new pair's task (the pair encoder and the task head).

One file of plain dicts, lists, tensors and primitives, loaded with `torch.load(weights_only=True)` and written
atomically, as `RouterPrior` is (`rmrouter.routers.prior`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rmrouter.routers.prior import (
    RouterPriorError,
    _check_primitives,
    _describe,
    check_pool,
    read_payload,
    save_payload,
)

FORMAT_VERSION = 1
KIND = "rmrouter.TaskPrior"
PAYLOAD_FIELDS = (
    "rm_names",
    "tasks",
    "reliability",
    "judged",
    "encoder",
    "pooling",
    "max_length",
    "mlp_config",
    "mlp_state",
    "task_head_state",
    "metadata",
)


@dataclass(frozen=True, eq=False)
class TaskPrior:
    """What the task-aware router learned offline, in the form the online router needs it.

    Args:
        rm_names: The pool's RM names, in the order of the columns of `reliability`.
        tasks: The task labels, in the order of its rows.
        reliability: `[T, N]` logits of "RM n is right on task t" (`sigmoid` gives each RM's accuracy on each task).
        judged: `[T, N]` how many training pairs of task `t` RM `n` judged: the evidence behind each reliability.
        encoder: Name of the pair encoder's text encoder in the model store.
        pooling: Its pooling (`mean` or `last_token`).
        max_length: Its token limit.
        mlp_config: The pair MLP's `build_mlp` config; primitives only.
        mlp_state: The pair MLP's `state_dict`.
        task_head_state: The task head's `weight` `[T, d]` and `bias` `[T]`: task logits `h W^T + b`.
        metadata: Provenance and scores; primitives only.
        version: Format version; always `FORMAT_VERSION` for a prior in memory.
        source: Where the prior was loaded from, for error messages; set by `load`, never saved.
    """

    rm_names: list[str]
    tasks: list[str]
    reliability: Tensor
    judged: Tensor
    encoder: str
    pooling: str
    max_length: int
    mlp_config: dict[str, Any]
    mlp_state: dict[str, Tensor]
    task_head_state: dict[str, Tensor]
    metadata: dict[str, str | float | int] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    source: str | None = None

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise RouterPriorError(f"format version {self.version} given, this rmrouter writes {FORMAT_VERSION}")
        for name in ("rm_names", "tasks"):
            values = list(getattr(self, name))
            object.__setattr__(self, name, values)
            if not values or len(set(values)) != len(values) or not all(isinstance(v, str) and v for v in values):
                raise RouterPriorError(f"{name} must be distinct non-empty names, got {values}")
        shape = [len(self.tasks), len(self.rm_names)]
        reliability = self.reliability
        if (
            not isinstance(reliability, Tensor)
            or list(reliability.shape) != shape
            or not reliability.is_floating_point()
        ):
            raise RouterPriorError(
                f"reliability must be a float tensor {shape} (tasks x RMs), got {_describe(reliability)}"
            )
        if not torch.isfinite(reliability).all():
            raise RouterPriorError("reliability must be finite logits")
        judged = self.judged
        if not isinstance(judged, Tensor) or list(judged.shape) != shape or not (judged >= 0).all():
            raise RouterPriorError(f"judged must be counts >= 0 of shape {shape}, got {_describe(judged)}")
        head = self.task_head_state
        dim = self.mlp_config.get("output_size") if isinstance(self.mlp_config, dict) else None
        if not isinstance(head, dict) or set(head) != {"weight", "bias"}:
            raise RouterPriorError(f"task_head_state must hold 'weight' and 'bias', got {_describe(head)}")
        if list(head["weight"].shape) != [len(self.tasks), dim] or list(head["bias"].shape) != [len(self.tasks)]:
            raise RouterPriorError(
                f"task_head_state has weight {list(head['weight'].shape)} and bias {list(head['bias'].shape)}, "
                f"expected [{len(self.tasks)}, {dim}] and [{len(self.tasks)}]: one row per task over h"
            )
        if not isinstance(self.encoder, str) or not self.encoder or not isinstance(self.pooling, str):
            raise RouterPriorError(f"encoder and pooling must be names, got {self.encoder!r}, {self.pooling!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise RouterPriorError(f"max_length must be a positive int, got {self.max_length!r}")
        _check_primitives(self.mlp_config, "mlp_config")
        _check_primitives(self.metadata, "metadata")

    def accuracies(self) -> Tensor:
        """`[T, N]` each RM's accuracy on each task, as the offline router estimated it."""
        return torch.sigmoid(self.reliability)

    def task_logits(self, h: Tensor) -> Tensor:
        """`[P, T]` task logits of pair embeddings `h [P, d]` (in `h`'s dtype and device)."""
        weight = self.task_head_state["weight"].to(h)
        return h @ weight.T + self.task_head_state["bias"].to(h)

    def check_pool(self, rm_names: Sequence[str]) -> None:
        """Refuses a pool whose RMs differ from the prior's, in names or in order."""
        check_pool(self.rm_names, rm_names, "task prior", self.source)

    def to_payload(self) -> dict[str, Any]:
        """The prior as plain dicts, lists, tensors and primitives (what `save` writes)."""

        def plain(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: tensor.detach().cpu().clone() for name, tensor in tensors.items()}

        return {
            "kind": KIND, "version": self.version, "rm_names": list(self.rm_names), "tasks": list(self.tasks),
            "reliability": self.reliability.detach().cpu().clone(), "judged": self.judged.detach().cpu().clone(),
            "encoder": self.encoder, "pooling": self.pooling,
            "max_length": self.max_length, "mlp_config": self.mlp_config, "mlp_state": plain(self.mlp_state),
            "task_head_state": plain(self.task_head_state), "metadata": dict(self.metadata),
        }  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Writes the prior to `path` atomically: a failed write leaves whatever was there before."""
        return save_payload(self.to_payload(), path)

    @classmethod
    def load(cls, path: str | Path) -> TaskPrior:
        """Reads a prior written by `save`, refusing other files, unknown format versions and inconsistent shapes."""
        path = Path(path)
        payload = read_payload(path, KIND, FORMAT_VERSION, PAYLOAD_FIELDS, "task prior")
        try:
            return cls(**{name: payload[name] for name in PAYLOAD_FIELDS}, version=payload["version"], source=str(path))
        except RouterPriorError as error:
            raise RouterPriorError(f"{path}: {error}") from None
