"""The offline stage: learn which RM to trust for which pair from behaviour data.

docs/concepts/method.md, "Offline stage: what each RM is good at".

A pair encoder maps each pair to a unit vector `h`; each RM `n` has a Bradley-Terry embedding `E_bt[n]`, and the
router's score is the cosine `s[i, n] = <h_i, normalize(E_bt[n])>`. Only the direction of `E_bt[n]` matters: the
online stage's prior mean is the normalised `E_bt[n]`, and scoring with the same unit vectors here keeps the offline
ranking exactly the one the online prior starts from. Two unit vectors give scores in [-1, 1], so BT logit gaps of at
most 2 (sigmoid <= 0.88): the loss would keep pushing even fully separated pairs and could never express confidence.
The BT logits are therefore `scale * s` with one learnable `scale` (CLIP's temperature), shared by all RMs so it
never changes a ranking; see `BT_SCALE_INIT` for the toy-problem measurement behind its start value.

A classification head `Linear(h) -> [N]` predicts `agree` with BCE; `L = L_bt + cls_weight * L_cls`. An RM that could
not judge a row (`eligible` False: it abstained) is left out of that row in both losses and in the metrics, as
neither right nor wrong; routing picks among the eligible RMs only.
With a frozen encoder, its embeddings are cached by text during a fit (and, with `store_embeddings`, kept on disk for
the next fit, test or predict) and its weights are left out of checkpoints (rebuilt from the encoder name on load,
checked against a saved fingerprint), as in `learned_reward.py`.

Metrics (`RoutingMetrics`) are logged at each epoch's end as `<stage>/<name>`: stage `train`, `val`, and for test
loader `i` the name `datamodule.test_split_names[i]` (`test`, `ood`, `ood/<domain>`); `<stage>/bt_pairs` is logged
per step too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from rmrouter.data.records import Prompt
from rmrouter.losses import disagreement_pairs, masked_bce_with_logits, router_bt_loss
from rmrouter.models.encoder import Pooling
from rmrouter.models.pair_encoder import PairEncoder
from rmrouter.modules.behaviour_router import ENCODER_PREFIX, BehaviourRouterModule
from rmrouter.routers.prior import RouterPrior

# Measured on the toy routing problem of tests/test_offline_router.py (tiny frozen encoder, 48 rows, batch 8, 8 epochs,
# 3 seeds): a learnable scale starting at 1 learned the routing in 2 of 3 seeds (train BT loss down to 0.13, and to
# 0.001 with scale 3.6 after 20 epochs; 5 of 5 seeds at batch 4), a fixed scale of 1 in 2 of 3 but with its loss
# floored at log(1 + e^-2) = 0.127, and a learnable scale starting at 3 or 10 in 0 of 6: large logits at the start,
# when every `h` is nearly the same, keep the router on the constant choice longer. So it starts as the plain cosine.
BT_SCALE_INIT = 1.0
BT_SCALE_MAX = 100.0  # as CLIP: a cap keeps a runaway scale from making the loss a hard margin
__all__ = ["ENCODER_PREFIX", "OfflineRouterModule"]


class OfflineRouterModule(BehaviourRouterModule):
    """Trains the router's pair encoder, per-RM BT embeddings and classification head on behaviour data.

    Batches are those of `BehaviourDataModule`: lists `prompt`, `chosen`, `rejected`, float tensors `agree`, `margin`
    and bool `eligible` of shape `[B, N]` whose column `n` is `rm_names[n]`, and `label_route` `[B]`.

    Args:
        rm_names: The pool's RM names in the column order of `agree` and `margin`.
        encoder: The text encoder's model name (`all-minilm-l6-v2`, a folder, ...), resolved by the model store.
        pooling: How token states become one vector: `mean` or `last_token`.
        max_length: Tokens per prompt+response text; longer texts lose the start of the prompt.
        hidden_size: Width of the pair MLP's hidden layer.
        embedding_size: Size of `h` and of each RM's BT embedding.
        freeze_encoder: Train everything but the encoder, which runs in eval mode without gradients, is cached by
            text and left out of checkpoints; otherwise it is fine-tuned too (a job for a GPU).
        cls_weight: lambda, the weight of the classification loss (the authors use 0, 0.2 and 0.9).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to the BT logit scale).
        store_embeddings: With a frozen encoder, keep its embeddings on disk under `embedding_cache_dir()`
            (`$RMROUTER_EMBEDDING_CACHE`, else `~/.cache/rmrouter/embeddings`), by encoder and text, so a later fit,
            test or predict on the same texts skips the encoder; false embeds again in every process.
    """

    router_label = "router (argmax BT)"

    def __init__(
        self,
        rm_names: list[str],
        encoder: str,
        pooling: Pooling,
        max_length: int,
        hidden_size: int,
        embedding_size: int,
        freeze_encoder: bool,
        cls_weight: float,
        learning_rate: NonNegativeFloat,
        weight_decay: NonNegativeFloat,
        store_embeddings: bool = True,
    ):
        super().__init__(rm_names, ("loss", "bt_loss", "cls_loss"))
        self.save_hyperparameters()
        if cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {cls_weight}")
        self.freeze_encoder = freeze_encoder
        self.pair_encoder = PairEncoder(
            encoder, pooling, max_length, hidden_size, embedding_size, freeze_encoder, store_embeddings
        )
        self.bt_embeddings = nn.Parameter(F.normalize(torch.randn(len(rm_names), embedding_size), dim=-1))
        self.bt_log_scale = nn.Parameter(torch.tensor(math.log(BT_SCALE_INIT)))
        self.cls_head = nn.Linear(embedding_size, len(rm_names))

    # ---- scores ---------------------------------------------------------------------------------------------------

    def normalized_bt_embeddings(self) -> Tensor:
        """`[N, embedding_size]` unit rows: the directions the scores use and the online prior starts from."""
        return F.normalize(self.bt_embeddings, dim=-1)

    def bt_scale(self) -> Tensor:
        return self.bt_log_scale.exp().clamp(max=BT_SCALE_MAX)

    def _route(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str], use_cache: bool
    ) -> tuple[Tensor, Tensor]:
        """Cosine router scores `[B, N]` and classification logits `[B, N]`."""
        h = self.pair_encoder(prompts, first, second, use_cache=use_cache)
        return h @ self.normalized_bt_embeddings().T, self.cls_head(h)

    def forward(self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]) -> Tensor:
        """`[B, N]` router scores `<h, normalize(E_bt[n])>` in [-1, 1]; the argmax is the routed RM."""
        return self._route(prompts, first, second, use_cache=False)[0]

    @torch.no_grad()
    def router_scores(self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]) -> Tensor:
        """`forward` without gradients, for inference; call `eval()` first to disable dropout."""
        return self(prompts, first, second)

    def prior_state(self, encoder_dir: str | Path | None = None) -> dict[str, Any]:
        """The fields of a `RouterPrior`: the normalised `E_bt` and everything to rebuild `h` for a new pair.

        `h = pair_representation(build_mlp(mlp_config) with mlp_state, e, e')` where `e`, `e'` are
        `build_text_encoder(encoder, pooling, max_length).encode([pair_text(prompt, response)])` for each side; a
        fine-tuned encoder is saved to `encoder_dir` (`pair_encoder_state`, which says when that raises).
        """
        return {
            "rm_names": list(self.rm_names),
            "bt_embeddings": self.normalized_bt_embeddings().detach().cpu().clone(),
            "bt_scale": float(self.bt_scale().detach()),
            **self.pair_encoder_state(encoder_dir),
        }

    def router_prior(self, metadata: dict[str, Any], encoder_dir: str | Path | None = None) -> RouterPrior:
        """The `RouterPrior` of these weights (`prior_state`), with `metadata`."""
        return RouterPrior(**self.prior_state(encoder_dir=encoder_dir), metadata=metadata)

    # ---- steps ----------------------------------------------------------------------------------------------------

    def _scores(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        agree, eligible = batch["agree"], batch["eligible"]
        scores, cls_logits = self._route(batch["prompt"], batch["chosen"], batch["rejected"], self._use_cache())
        bt_loss = router_bt_loss(self.bt_scale() * scores, agree, eligible)
        cls_loss = masked_bce_with_logits(cls_logits, agree, eligible)
        # a cls_weight of 0 still multiplies: the head stays in the graph (zero gradients), as DDP needs
        loss = bt_loss + self.hparams.cls_weight * cls_loss
        if self._trainer is not None and self._trainer.state.fn != TrainerFn.PREDICTING:
            # per step, so steps without pairs show up; batch_size 1 makes the epoch value the mean count per step
            pairs = disagreement_pairs(agree, eligible)[0].numel()
            self.log(
                f"{stage}/bt_pairs", float(pairs), on_step=stage == "train", on_epoch=True, sync_dist=True,
                batch_size=1, add_dataloader_idx=False,
            )  # fmt: skip
        return scores, cls_logits, {"loss": loss, "bt_loss": bt_loss, "cls_loss": cls_loss}

    # ---- optimizer and checkpoints --------------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [parameter for parameter in self.trainer.model.parameters() if parameter.requires_grad]
        # decay would pull the log scale towards 0, i.e. the scale towards 1, undoing what the BT loss learns
        decayed = [parameter for parameter in parameters if parameter is not self.bt_log_scale]
        groups = [{"params": decayed}, {"params": [self.bt_log_scale], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
