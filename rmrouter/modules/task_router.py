"""The task-aware offline router: per-task RM reliability, a task head for pairs without a label, and a per-pair
residual where the data support one (the math and why: `rmrouter.routers.task_aware`).

On the pair encoder's unit vector `h` (the paper router's, `rmrouter.models.pair_encoder`) sit two linear heads: the
task head `q(t | h)` over `tasks`, and the residual `r(h)`, one value per RM. The reliabilities start at the training
split's per-task accuracies and the residual at zero, so that training starts from the lookup and moves off it only
as far as the data pull. The `[T, N]` reliability logits `a` take no weight decay:
decay would pull every RM's accuracy towards a coin's. The loss over the pairs of a known task is

    L = BCE(a[t] + r(h), agree; eligible) + task_weight * CE(q(. | h), t)

Routing reads a pair's task from its label (`domain`) when it is one of `tasks` and `route_with_labels` is on, and
from the task head otherwise; the routing scores are the probabilities that each RM is right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat
from torch import Tensor, nn

from rmrouter.losses import masked_bce_with_logits
from rmrouter.models.encoder import Pooling
from rmrouter.models.pair_encoder import PairEncoder
from rmrouter.modules.behaviour_router import BehaviourRouterModule
from rmrouter.routers.task_aware import (
    UNKNOWN_TASK,
    empirical_reliability,
    right_logits,
    right_probabilities,
    task_counts,
    task_indices,
    task_probabilities,
)
from rmrouter.routers.task_prior import TaskPrior

PROBABILITY_FLOOR = 1e-6  # the logit of a probability of 0 or 1 is infinite; AUROC needs finite scores


class TaskRouterModule(BehaviourRouterModule):
    """Trains the task-aware router on behaviour data (`BehaviourDataModule` batches).

    Args:
        rm_names: The pool's RM names in the column order of `agree` and `margin`.
        tasks: The task labels (pair domains) of the training data; a training pair of another domain is an error,
            a validation or test pair of another domain is routed by the task head.
        encoder: The text encoder's model name (`all-minilm-l6-v2`, a folder, ...), resolved by the model store.
        pooling: How token states become one vector: `mean` or `last_token`.
        max_length: Tokens per prompt+response text; longer texts lose the start of the prompt.
        hidden_size: Width of the pair MLP's hidden layer.
        embedding_size: Size of `h`.
        freeze_encoder: Train everything but the encoder, which runs in eval mode without gradients, is cached by
            text and left out of checkpoints; otherwise it is fine-tuned too (a job for a GPU).
        task_weight: Weight of the task head's cross-entropy.
        residual: Learn the per-pair residual; false routes by per-task reliability alone (the learned lookup).
        route_with_labels: Read a pair's task from its label when the label is known; false always predicts it
            from the text (routing without labels, as for a stream whose pairs carry none).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay of the encoder MLP and both heads (not of the reliability logits).
        store_embeddings: With a frozen encoder, keep its embeddings on disk (`rmrouter.models.embedding_store`).
    """

    router_label = "task-aware router"

    def __init__(
        self,
        rm_names: list[str],
        tasks: list[str],
        encoder: str,
        pooling: Pooling,
        max_length: int,
        hidden_size: int,
        embedding_size: int,
        freeze_encoder: bool,
        task_weight: float,
        learning_rate: NonNegativeFloat,
        weight_decay: NonNegativeFloat,
        residual: bool = True,
        route_with_labels: bool = True,
        store_embeddings: bool = True,
    ):
        super().__init__(rm_names, ("loss", "right_loss", "task_loss"))
        self.save_hyperparameters()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must list the training data's distinct domains, got {tasks}")
        if task_weight < 0:
            raise ValueError(f"task_weight must be >= 0, got {task_weight}")
        self.tasks = list(tasks)
        self.pair_encoder = PairEncoder(
            encoder, pooling, max_length, hidden_size, embedding_size, freeze_encoder, store_embeddings
        )
        self.reliability = nn.Parameter(torch.zeros(len(tasks), len(rm_names)))
        self.task_head = nn.Linear(embedding_size, len(tasks))
        self.residual_head = nn.Linear(embedding_size, len(rm_names), bias=False)
        nn.init.zeros_(self.residual_head.weight)
        self.residual_head.requires_grad_(residual)
        # how many training judgements stand behind each reliability: the online prior's strength (`TaskPrior.judged`)
        self.register_buffer("judged", torch.zeros(len(tasks), len(rm_names)))

    def setup(self, stage: str) -> None:
        """A fit starts its reliabilities at the training split's per-task accuracies (`empirical_reliability`), so it
        starts at the lookup; a resumed fit's checkpoint then overwrites them."""
        if stage != "fit":
            return
        splits = getattr(getattr(self._trainer, "datamodule", None), "splits", None) or {}
        train = splits.get("train")
        if train is None or len(train) == 0:
            return
        with torch.no_grad():
            start = empirical_reliability(train.domains, train.agree.bool(), train.eligible, self.tasks)
            self.reliability.copy_(start.to(self.reliability))
            self.judged.copy_(task_counts(train.domains, train.eligible, self.tasks).to(self.judged))

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Task logits `[B, T]`, residuals `[B, N]` and the known task of each pair `[B]` (`UNKNOWN_TASK` if none)."""
        h = self.pair_encoder(batch["prompt"], batch["chosen"], batch["rejected"], use_cache=self._use_cache())
        known = task_indices(batch["domain"], self.tasks).to(h.device)
        return self.task_head(h), self.residual_head(h), known

    def _scores(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        task_logits, residual, known = self(batch)
        if stage == "train" and (known == UNKNOWN_TASK).any():
            unknown = sorted({d for d, k in zip(batch["domain"], known.tolist(), strict=True) if k == UNKNOWN_TASK})
            raise ValueError(
                f"training pairs of domains {unknown} are not in model.init_args.tasks={self.tasks}: list every "
                "training domain there"
            )
        labelled = known >= 0
        right_loss = masked_bce_with_logits(
            right_logits(self.reliability, residual[labelled], known[labelled]),
            batch["agree"][labelled],
            batch["eligible"][labelled],
        )
        task_loss = (
            F.cross_entropy(task_logits[labelled], known[labelled]) if labelled.any() else task_logits.sum() * 0.0
        )
        loss = right_loss + self.hparams.task_weight * task_loss
        routing_tasks = known if self.hparams.route_with_labels else torch.full_like(known, UNKNOWN_TASK)
        scores = right_probabilities(self.reliability, residual, task_probabilities(task_logits, routing_tasks))
        if labelled.any() and self._trainer is not None and not self._trainer.predicting:
            task_accuracy = (task_logits[labelled].argmax(dim=-1) == known[labelled]).float().mean()
            self.log(f"{stage}/task_acc", task_accuracy, on_epoch=True, on_step=False, sync_dist=True,
                     batch_size=int(labelled.sum()), add_dataloader_idx=False)  # fmt: skip
        logits = torch.logit(scores.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
        return scores, logits, {"loss": loss, "right_loss": right_loss, "task_loss": task_loss}

    def router_prior(self, metadata: dict[str, Any], encoder_dir: str | Path | None = None) -> TaskPrior:
        """The `TaskPrior` of these weights: the reliabilities, the pair encoder and the task head. The residual stays
        offline: the online router learns in the task space alone (`rmrouter.routers.task_bayesian`)."""
        head = {name: value.detach().cpu().clone() for name, value in self.task_head.state_dict().items()}
        return TaskPrior(
            rm_names=list(self.rm_names), tasks=list(self.tasks), reliability=self.reliability.detach().cpu().clone(),
            judged=self.judged.detach().cpu().clone(), task_head_state=head, metadata=metadata,
            **self.pair_encoder_state(encoder_dir),
        )  # fmt: skip

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decayed = [p for p in self.trainer.model.parameters() if p.requires_grad and p is not self.reliability]
        groups = [{"params": decayed}, {"params": [self.reliability], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
