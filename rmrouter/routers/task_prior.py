"""The task-aware offline router's artifact, consumed by `TaskBayesianRouter`: per-task RM reliabilities and what
tells a new pair's task (the pair encoder and the task head).

One file of plain dicts, lists, tensors and primitives, loaded with `torch.load(weights_only=True)` and written
atomically, by the `PriorFile` methods `RouterPrior` has too (`rmrouter.routers.prior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from rmrouter.routers.prior import PriorFile, RouterPriorError, _describe

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
class TaskPrior(PriorFile):
    """What the task-aware router learned offline, in the form the online router needs it.

    Args:
        rm_names: The pool's RM names, in the order of the columns of `reliability`.
        tasks: The task labels, in the order of its rows.
        reliability: `[T, N]` logits of "RM n is right on task t" (`sigmoid` gives each RM's accuracy on each task).
        judged: `[T, N]` how many training pairs of task `t` RM `n` judged: the evidence behind each reliability.
        task_head_state: The task head's `weight` `[T, d]` and `bias` `[T]`: task logits `h W^T + b`.
        version: Format version; always `FORMAT_VERSION` for a prior in memory.
        source: Where the prior was loaded from, for error messages; set by `load`, never saved.
        encoder, pooling, max_length, mlp_config, mlp_state, metadata: the pair encoder and provenance (`PriorFile`).
    """

    rm_names: list[str]
    tasks: list[str]
    reliability: Tensor
    judged: Tensor
    task_head_state: dict[str, Tensor]
    version: int = FORMAT_VERSION
    source: str | None = None

    KIND: ClassVar[str] = KIND
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = PAYLOAD_FIELDS
    WHAT: ClassVar[str] = "task prior"

    def __post_init__(self) -> None:
        self._check_version_and_names("rm_names", "tasks")
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
        self._check_pair_encoder()

    def accuracies(self) -> Tensor:
        """`[T, N]` each RM's accuracy on each task, as the offline router estimated it."""
        return torch.sigmoid(self.reliability)

    def task_logits(self, h: Tensor) -> Tensor:
        """`[P, T]` task logits of pair embeddings `h [P, d]` (in `h`'s dtype and device)."""
        weight = self.task_head_state["weight"].to(h)
        return h @ weight.T + self.task_head_state["bias"].to(h)

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
