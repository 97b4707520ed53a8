"""A router over a simulated stream: each batch routed, trained on and observed as an online step; every pair kept."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rmrouter.routers.base import Router
from rmrouter.simulation.learners import Learner
from rmrouter.simulation.stream import PairStream


@dataclass(frozen=True)
class StreamLog:
    """Per routed pair, in stream order: its batch, its record, the RM used (-1: an ensemble), the label it got
    (+1 first, -1 second, 0 none), the truth (+1 first is chosen) and the loss the router observed (NaN: not trained).

    `rm_calls` is the router's RM calls over the whole stream.
    """

    step: Tensor
    row: Tensor
    rm_index: Tensor
    preference: Tensor
    truth: Tensor
    loss: Tensor
    rm_calls: int

    @property
    def right(self) -> Tensor:
        """`[M]` bool: the pair got the true label."""
        return self.preference == self.truth

    def to_dict(self) -> dict[str, list | int]:
        """Plain lists for JSON; a NaN loss (a pair not trained on) is None."""
        fields = ("step", "row", "rm_index", "preference", "truth")
        losses = [None if math.isnan(value) else value for value in self.loss.tolist()]
        return {**{name: getattr(self, name).tolist() for name in fields}, "loss": losses, "rm_calls": self.rm_calls}

    @classmethod
    def from_dict(cls, data: dict) -> StreamLog:
        dtypes = {"step": torch.long, "row": torch.long, "rm_index": torch.long}
        fields = ("step", "row", "rm_index", "preference", "truth")
        tensors = {name: torch.tensor(data[name], dtype=dtypes.get(name, torch.float64)) for name in fields}
        loss = torch.tensor([math.nan if value is None else value for value in data["loss"]], dtype=torch.float64)
        return cls(**tensors, loss=loss, rm_calls=int(data["rm_calls"]))


def run_stream(
    router: Router,
    stream: PairStream,
    learner: Learner,
    num_pairs: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> StreamLog:
    """Routes `num_pairs` pairs of `stream` (seed `seed`) in batches of `batch_size`, `learner` training on the labels.

    Args:
        router: A fresh router (its state is what the stream teaches it).
        stream: The held-out pairs.
        learner: Fidelity (a) `OracleLearner` or (b) `LogLinearDPO`; a fresh one.
        num_pairs: Pairs routed in all (passes repeat the stream).
        batch_size: Pairs per step.
        seed: The stream's order and side flips.
        progress: Show a progress bar.
    """
    parts: dict[str, list[Tensor]] = {name: [] for name in ("step", "row", "rm_index", "preference", "truth", "loss")}
    calls_before = router.rm_calls
    batches = stream.batches(num_pairs, batch_size, seed)
    total = -(-num_pairs // batch_size)
    for batch in tqdm(batches, total=total, disable=not progress, desc=type(router).__name__, leave=False):
        # route -> label -> train -> observe, as each step of `OnlineDPOModule`
        routing = router.route(batch.pairs, batch.judge)
        losses = learner.step(batch, routing.preference.detach().float().cpu())
        router.observe(routing, losses)
        parts["step"].append(torch.full((len(batch.rows),), batch.step, dtype=torch.long))
        parts["row"].append(batch.rows)
        parts["rm_index"].append(routing.rm_index.detach().long().cpu())
        parts["preference"].append(routing.preference.detach().double().cpu())
        parts["truth"].append(batch.truth.double())
        parts["loss"].append(losses.detach().double().cpu())
    return StreamLog(
        **{name: torch.cat(values) for name, values in parts.items()}, rm_calls=router.rm_calls - calls_before
    )
