"""Drift streams (rmrouter.simulation.drift) and the windowed lookup baseline, on hand-built records."""

from __future__ import annotations

import pytest
import torch
from behaviour_helpers import record_of

from rmrouter.data.records import PreferenceRecord
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.simulation import OracleLearner, run_stream
from rmrouter.simulation.drift import (
    DriftSchedule,
    DriftStream,
    kind_of,
    quality_drift,
    rm_degradation,
    task_mix_drift,
)
from rmrouter.simulation.windowed_lookup import WindowedLabelRouter

RMS = ["a", "b"]
SOURCES = ["alpaca_eval/alpaca-7b", "alpaca_eval/claude-2", "alpaca_eval/phi-2-vs-vicuna-7b-v1.5", "hh-rlhf/x", "gsm8k"]


def records(count: int = 40, right: tuple[float, float] = (1.0, -1.0)):
    """Record i: source SOURCES[i % 5] (domains oasst, oasst, oasst, safety, math); RM a right, RM b wrong."""
    domains = ["oasst", "oasst", "oasst", "safety", "math"]
    made = []
    for i in range(count):
        pair = PreferenceRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}], f"good {i}", f"bad {i}",
                                domains[i % 5], SOURCES[i % 5])  # fmt: skip
        made.append(record_of(pair, dict(zip(RMS, right, strict=True))))
    return made


def test_quality_drift_serves_each_generators_pairs_in_its_phase_in_order():
    held = records()
    schedule = quality_drift(held, len(RMS), phase_length=12, seed=0)
    sources = [held[int(i)].pair.source for i in schedule.order]
    assert len(sources) == 36 and schedule.phases == [("reference vs alpaca-7b", 0), ("reference vs claude-2", 12),
                                                       ("model vs model", 24)]  # fmt: skip
    assert (
        set(sources[:12]) == {SOURCES[0]} and set(sources[12:24]) == {SOURCES[1]} and set(sources[24:]) == {SOURCES[2]}
    )
    assert sorted(schedule.order[:8].tolist()) == list(range(0, 40, 5))  # a whole pass of the phase's 8 records first
    assert torch.equal(quality_drift(held, 2, 12, seed=0).order, schedule.order)  # the seed fixes the order
    assert not torch.equal(quality_drift(held, 2, 12, seed=1).order, schedule.order)
    assert not schedule.flipped.any()


def test_task_mix_drift_moves_the_share_of_math_to_chat_at_the_phase_boundary():
    held = records(count=100)
    schedule = task_mix_drift(held, len(RMS), phase_length=400, seed=0)
    kinds = [kind_of(held[int(i)]) for i in schedule.order]
    first, second = kinds[:400], kinds[400:]
    assert first.count("math") / 400 == pytest.approx(0.8, abs=0.05)
    assert second.count("chat") / 400 == pytest.approx(0.8, abs=0.05)
    assert second.count("math") / 400 == pytest.approx(0.1, abs=0.04)
    assert schedule.phases == [("math-heavy", 0), ("chat-heavy", 400)]


def test_degradation_reverses_one_rms_judgements_from_the_change_point_at_its_rate():
    held = records()
    schedule = rm_degradation(held, len(RMS), rm=0, length=2000, change_at=800, flip_rate=0.5, seed=0)
    assert not schedule.flipped[:800].any() and not schedule.flipped[:, 1].any()
    assert schedule.flipped[800:, 0].float().mean().item() == pytest.approx(0.5, abs=0.05)
    stream = DriftStream(held, RMS, lambda seed: schedule)
    right, eligible = stream.right_at(0)
    assert right[:800, 0].all() and eligible.all()  # RM a was always right, and stays so where not reversed
    assert torch.equal(right[800:, 0], ~schedule.flipped[800:, 0]) and not right[:, 1].any()
    with pytest.raises(ValueError, match="change_at must lie inside"):
        rm_degradation(held, 2, rm=0, length=10, change_at=10, flip_rate=0.5, seed=0)


def test_a_drift_stream_serves_the_reversed_judgements_to_routers_and_keeps_the_truth():
    held = records()
    schedule = rm_degradation(held, len(RMS), rm=0, length=64, change_at=32, flip_rate=1.0, seed=3)
    stream = DriftStream(held, RMS, lambda seed: schedule)
    log = run_stream(FirstRM(), stream, OracleLearner(), num_pairs=64, batch_size=8, seed=3)
    assert torch.equal(log.row, schedule.order)
    assert log.right[:32].all() and not log.right[32:].any()  # RM a right before the change, always wrong after
    with pytest.raises(ValueError, match="has 64 positions"):
        next(stream.batches(65, 8, seed=3))


def test_a_schedule_refuses_phases_outside_the_stream():
    with pytest.raises(ValueError, match="phases must start at 0"):
        DriftSchedule(torch.zeros(4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.bool), [("x", 1)])


class FirstRM(WindowedLabelRouter):
    """Always RM a: a router that never adapts."""

    def __init__(self):
        routing = DataLabelRouting({"": [0, 1]}, {"": [1.0, 0.0]})
        super().__init__(RMS, routing, window=4, min_pairs=4)

    def estimates(self, label: str) -> torch.Tensor:
        return torch.tensor([1.0, 0.0], dtype=torch.float64)


def test_the_windowed_lookup_leaves_an_rm_once_its_recent_pairs_go_wrong():
    held = records(count=40)
    # on the training rows RM a was always right and RM b on every other row
    right = torch.tensor([[True, i % 2 == 0] for i in range(40)])
    routing = DataLabelRouting.fit([r.pair.domain for r in held], [r.pair.source for r in held], right,
                                   torch.ones(40, 2, dtype=torch.bool))  # fmt: skip
    router = WindowedLabelRouter(RMS, routing, window=20, min_pairs=5)
    assert router.estimates("domain:math").tolist() == [1.0, 0.5]  # the training accuracies until pairs come in
    # on the stream both are right, until a's every judgement is reversed half-way
    schedule = rm_degradation(held, len(RMS), rm=0, length=400, change_at=200, flip_rate=1.0, seed=0)
    stream = DriftStream(records(count=40, right=(1.0, 1.0)), RMS, lambda seed: schedule)
    log = run_stream(router, stream, OracleLearner(), num_pairs=400, batch_size=8, seed=0)
    assert (log.rm_index[:200] == 0).all()  # the lookup's RM while it is right
    assert (log.rm_index[-100:] == 1).all()  # after a's pairs go wrong, every label moved to b within its window
    estimate = router.estimates("domain:math")
    assert estimate[0] <= 0.5 and estimate[1] == 1.0
    state = router.state_dict()
    again = WindowedLabelRouter(RMS, routing, window=20, min_pairs=5)
    again.load_state_dict(state)
    assert torch.equal(again.estimates("domain:math"), estimate)


def test_the_windowed_lookup_needs_the_training_accuracies():
    with pytest.raises(ValueError, match="training accuracies"):
        WindowedLabelRouter(RMS, DataLabelRouting({"": [0, 1]}), window=10)
