"""Routers under DDP: two gloo processes route DIFFERENT pairs, yet every router's state stays identical on both ranks.

Each rank builds the same routers (same seeds), routes its own pairs with a local judge and observes its own losses;
the routers gather across ranks, so posteriors, normaliser history, counters and generator states must match, and
must equal one process routing the concatenation of both ranks' batches.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from router_helpers import RMS, make_pairs

from rmrouter.routers.base import PairBatch
from rmrouter.routers.baseline_routers import LASERRouter, MajorityVoteRouter, RandomRouter, SingleRMRouter, UWORouter
from rmrouter.routers.bayesian import BayesianRouter

STEPS = 4
WORLD = 2


def concat(a: PairBatch, b: PairBatch) -> PairBatch:
    fields = ("prompts", "first", "second", "references", "domains")
    return PairBatch(*(getattr(a, f) + getattr(b, f) for f in fields))


class FakeJudge:
    """The right RM for a pair (0 for math prompts, 1 otherwise) prefers `first`, the other RM `second`, with margins
    whose size varies by pair and RM: routers that rescale margins over the batch (UWO) see different scales per rank
    than over the global batch."""

    def margins(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        right = torch.tensor([0 if "math" in p[0]["content"] else 1 for p in pairs.prompts])
        size = torch.tensor([1.0 + (len(first) * (rm_index + 2)) % 7 for first in pairs.first])
        return torch.where(right == rm_index, 1.0, -1.0) * size

    def scores(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        margins = self.margins(rm_index, pairs)
        return torch.stack([margins, torch.zeros_like(margins)], dim=1)


def batches(rank: int, step: int) -> PairBatch:
    """Rank `rank`'s pairs at `step`: different texts and a different number of pairs per rank (and step)."""
    return make_pairs(random.Random(1000 * rank + step), 3 + 2 * rank + step % 2)


def losses_for(rank: int, step: int, preference: torch.Tensor) -> torch.Tensor:
    noise = torch.rand(len(preference), generator=torch.Generator().manual_seed(100 * rank + step))
    losses = torch.where(preference > 0, 0.2, 1.0) + 0.1 * noise
    losses[preference == 0] = float("nan")
    if len(losses) > 1 and step == 1:
        losses[0] = float("nan")  # a labelled pair not trained on
    return losses


def build_routers(encoder: str) -> dict:
    return {
        "bayesian": BayesianRouter(
            RMS, prior_path=None, sigma2=0.05, lambda0=1.0, warmup=4, use_prior=False, online_updates=True,
            integration="prior_injection", offline_weight=0.0, seed=3, encoder=encoder, pooling="mean", max_length=32,
        ),
        "random": RandomRouter(RMS, seed=4),
        "majority": MajorityVoteRouter(RMS, seed=5),
        "uwo": UWORouter(RMS, coeff=0.5),
        "single": SingleRMRouter(RMS, rm="chat_rm"),
        "laser": LASERRouter(RMS, 0.1, encoder, "mean", 32, warmup=2, seed=6),
    }  # fmt: skip


def run_routers(routers: dict, batch_of) -> dict:
    """Routes and observes `STEPS` batches; returns every router's state and this process's labels."""
    judge, labels = FakeJudge(), {name: [] for name in routers}
    for step in range(STEPS):
        pairs, loss_of = batch_of(step)
        for name, router in routers.items():
            routing = router.route(pairs, judge)
            labels[name].append((routing.preference.clone(), routing.rm_index.clone()))
            router.observe(routing, loss_of(step, routing.preference))
    return {"states": {name: router.state_dict() for name, router in routers.items()}, "labels": labels}


def worker(rank: int, encoder: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        routers = build_routers(encoder)
        trainer = SimpleNamespace(strategy=SimpleNamespace(world_size=WORLD, global_rank=rank, root_device="cpu"))
        for router in routers.values():
            router.setup(trainer, SimpleNamespace(device=torch.device("cpu")), "fit")
        result = run_routers(routers, lambda step: (batches(rank, step), lambda s, p: losses_for(rank, s, p)))
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process(encoder: str) -> dict:
    """One process routing both ranks' pairs, in rank order, as one batch."""

    def batch_of(step):
        parts = [batches(rank, step) for rank in range(WORLD)]
        sizes = [len(p) for p in parts]

        def loss_of(s, preference):
            chunks = preference.split(sizes)
            return torch.cat([losses_for(rank, s, chunk) for rank, chunk in enumerate(chunks)])

        return concat(*parts), loss_of

    return run_routers(build_routers(encoder), batch_of)


def assert_same(a, b, exact: bool, where: str) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            assert_same(a[key], b[key], exact, f"{where}.{key}")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if exact or not a.is_floating_point():
            assert torch.equal(a, b), where
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=where)
    else:
        assert a == b, where


@pytest.mark.slow
def test_routers_keep_identical_state_across_two_ranks(tmp_path, tiny_encoder_dir):
    mp.spawn(worker, args=(tiny_encoder_dir, str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    states = [r["states"] for r in results]
    assert_same(states[0], states[1], exact=True, where="rank0 vs rank1")
    # The counters count both ranks' pairs, and the posteriors learned from both.
    total = sum(len(batches(rank, step)) for rank in range(WORLD) for step in range(STEPS))
    assert all(state["pairs_routed"] == total for state in states[0].values())
    assert "posteriors" in states[0]["bayesian"] and states[0]["bayesian"]["normalizer"]["history"].numel() > 0
    # Two ranks behave as one process routing the global batch: same state, same per-pair decisions.
    single = single_process(tiny_encoder_dir)
    assert_same(states[0], single["states"], exact=False, where="ddp vs single")
    for name, per_step in single["labels"].items():
        for step, (preference, rm_index) in enumerate(per_step):
            sizes = [len(batches(rank, step)) for rank in range(WORLD)]
            for rank, (p, r) in enumerate(zip(preference.split(sizes), rm_index.split(sizes), strict=True)):
                got_p, got_r = results[rank]["labels"][name][step]
                assert torch.equal(got_p, p) and torch.equal(got_r, r), f"{name} step {step} rank {rank}"
