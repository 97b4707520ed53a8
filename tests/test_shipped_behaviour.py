"""Shipped behaviour sets: `ship` keeps a collection in the repository, every reader takes the folder, and the shipped
large set matches what this machine scores on a slice of it."""

from __future__ import annotations

import gzip
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rmrouter.behaviour.shipped import (
    is_shipped,
    read_manifest,
    read_shipped,
    ship,
    shipped_pool,
)
from rmrouter.cli import main
from rmrouter.data.behaviour import read_behaviour, rm_names_of
from rmrouter.data.behaviour_datamodule import BehaviourDataModule
from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.data.jsonl import DataError

ROOT = Path(__file__).resolve().parents[1]
LARGE = ROOT / "rmrouter" / "shipped" / "behaviour_large"


def write_config(tmp_path: Path, learned_checkpoint: str) -> Path:
    pool = {
        "class_path": "rmrouter.reward_models.RewardModelPool",
        "init_args": {
            "reward_models": [
                {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "length"}},
                {
                    "class_path": "rmrouter.reward_models.LearnedRewardModel",
                    "init_args": {"name": "learned", "checkpoint": learned_checkpoint, "batch_size": 4},
                },
                {"class_path": "rmrouter.reward_models.GSM8KVerifierRewardModel", "init_args": {"name": "verifier"}},
            ]
        },
    }
    config = {
        "pool": "pool.yaml",
        "data": [
            {"class_path": "rmrouter.data.GSM8KSolutionPairs", "init_args": {"limit": 5}},
            {"class_path": "rmrouter.data.HHRLHFHarmlessPairs", "init_args": {"limit": 4, "on_error": "skip"}},
        ],
        "output": str(tmp_path / "out" / "small.jsonl"),
        "table": None,
        "batch_size": 4,
    }
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(pool))
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def shipped(tmp_path, tiny_learned_checkpoint):
    """A small collection through the CLI (stopped after one batch and resumed), shipped into `tmp_path/set`."""
    config = write_config(tmp_path, tiny_learned_checkpoint)
    main(["collect", "--config", str(config), "--max_batches", "1"])
    main(["collect", "--config", str(config)])
    main(["ship", "--behaviour_config", str(config), "--output", str(tmp_path / "set")])
    return tmp_path / "set", tmp_path / "out" / "small.jsonl"


def test_a_shipped_set_reads_back_as_the_collected_file(shipped):
    folder, collected = shipped
    assert is_shipped(folder) and not is_shipped(collected)
    expected = [record.to_dict() for record in read_behaviour(collected)]
    assert [record.to_dict() for record in read_shipped(folder)] == expected
    assert [record.to_dict() for record in read_behaviour(folder)] == expected
    assert rm_names_of(folder) == ["length", "learned", "verifier"]
    smaller = read_behaviour(folder, ["length", "verifier"], exact=False)
    assert all(list(record.scores) == ["length", "verifier"] for record in smaller)
    with pytest.raises(DataError, match="expected"):
        read_behaviour(folder, ["length"])


def test_a_shipped_set_holds_ids_scores_heads_and_the_runs_that_collected_it(shipped):
    folder, collected = shipped
    manifest = read_manifest(folder)
    assert manifest["pairs"] == 9 and manifest["rm_names"] == ["length", "learned", "verifier"]
    assert [run["pairs"] for run in manifest["runs"]] == [4, 5]  # the stopped run and the resumed one
    with gzip.open(folder / "scores.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {"id", "scores"}  # no texts: the vendored kit has them
    head = torch.load(folder / "heads" / "learned.ckpt", weights_only=True)
    assert "optimizer_states" not in head and "state_dict" in head
    learned = manifest["pool"]["init_args"]["reward_models"][1]["init_args"]
    assert learned["checkpoint"] == "heads/learned.ckpt"
    readme = (folder / "README.md").read_text()
    config = folder.parent / "collect.yaml"
    assert f"python cli.py ship --behaviour_config {config} --output {folder} --tolerance" in readme
    assert manifest["files"]["scores.jsonl.gz"] in readme and manifest["runs"][0]["commit"] in readme


def test_the_shipped_pool_scores_as_the_collection_did(shipped):
    folder, _ = shipped
    pool = shipped_pool(folder)
    assert pool.names == ["length", "learned", "verifier"]
    for record in read_shipped(folder)[:3]:
        pair = record.pair
        for rm in pool.reward_models:
            chosen, rejected = pool.score_pairs(rm, [pair.prompt], [pair.chosen], [pair.rejected], [pair.reference])
            expected = record.scores[rm.name]
            assert [chosen.item(), rejected.item()] == pytest.approx(list(expected), nan_ok=True, abs=1e-6)


def test_every_reader_takes_the_folder(shipped, tmp_path):
    folder, collected = shipped
    main(["table", "--behaviour", str(folder), "--output", str(tmp_path / "a.md")])
    main(["table", "--behaviour", str(collected), "--output", str(tmp_path / "b.md")])
    table = (tmp_path / "a.md").read_text()
    assert table.split("\n", 4)[4] == (tmp_path / "b.md").read_text().split("\n", 4)[4]  # all but the command line
    module = BehaviourDataModule(str(folder), ["length", "learned"], split=BehaviourSplit(fractions={"train": 1.0}))
    module.setup("fit")
    assert len(module.train_pairs) == 9


def test_a_changed_score_file_or_vendored_pair_is_refused(shipped, monkeypatch):
    folder, _ = shipped
    scores = folder / "scores.jsonl.gz"
    original = scores.read_bytes()
    lines = gzip.decompress(original).decode().splitlines()
    row = json.loads(lines[0])
    row["scores"]["length"][0] += 1
    scores.write_bytes(gzip.compress(("\n".join([json.dumps(row), *lines[1:]]) + "\n").encode()))
    with pytest.raises(DataError, match="checksum"):
        read_shipped(folder)

    scores.write_bytes(original)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["data"][0]["init_args"]["limit"] = 2  # the sources give fewer pairs than were shipped
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"scores.jsonl.gz:3: pair 'gsm8k:.*' is not among the pairs"):
        read_shipped(folder)


def test_shipping_an_unfinished_collection_is_refused(tmp_path, tiny_learned_checkpoint):
    config = write_config(tmp_path, tiny_learned_checkpoint)
    main(["collect", "--config", str(config), "--max_batches", "1"])
    with pytest.raises(DataError, match="does not hold exactly the pairs"):
        ship(config, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def slice_of(records, per_source: int):
    """The first `per_source` records of each source and domain (73 pairs of the large set at 1)."""
    taken: dict[str, int] = {}
    chosen = []
    for record in records:
        key = record.pair.source + record.pair.domain
        if taken.get(key, 0) < per_source:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(record)
    return chosen


@pytest.mark.real_models
def test_the_shipped_large_set_matches_a_slice_scored_on_this_machine():
    """The shipped records are what this checkout's pool scores: a slice of every source, rescored here with the
    shipped heads and the dtypes the collection used, within the manifest's tolerance and with every margin's sign
    equal unless either margin is a near-tie (within that tolerance of 0)."""
    from rmrouter.behaviour.collect import _score_batch

    manifest = read_manifest(LARGE)
    records = slice_of(read_shipped(LARGE), per_source=1)
    pool = shipped_pool(LARGE)
    scores = _score_batch(pool, [record.pair for record in records], dict.fromkeys(pool.names, 0.0))
    tolerance = manifest["tolerance"]
    for record, row in zip(records, scores.tolist(), strict=True):
        for name, (chosen, rejected) in zip(pool.names, row, strict=True):
            shipped_chosen, shipped_rejected = record.scores[name]
            if math.isnan(shipped_chosen):
                assert math.isnan(chosen) and math.isnan(rejected), (record.pair.id, name)
                continue
            assert abs(chosen - shipped_chosen) <= tolerance and abs(rejected - shipped_rejected) <= tolerance, (
                record.pair.id, name, (chosen, rejected), record.scores[name])  # fmt: skip
            here, there = chosen - rejected, shipped_chosen - shipped_rejected
            if min(abs(here), abs(there)) > tolerance:
                assert (here > 0) == (there > 0), (record.pair.id, name, here, there)


def test_the_cost_of_each_rm_is_timed_alone_on_the_sets_pairs(shipped, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    rm_cost = importlib.import_module("rm_cost")
    folder, _ = shipped
    timed, warm = rm_cost.sample(list(range(9)), 3, seed=0)
    assert len(timed) == len(warm) == 3 and not set(timed) & set(warm)
    output = tmp_path / "docs" / "rm_cost.md"
    costs = rm_cost.main(["--behaviour", str(folder), "--pairs", "3", "--batch-size", "2", "--output", str(output)])
    assert list(costs) == ["length", "learned", "verifier"] and all(seconds >= 0 for seconds in costs.values())
    assert json.loads(output.with_suffix(".json").read_text())["seconds_per_pair"] == costs
    report = output.read_text()
    assert "do not edit by hand" in report and "| learned | float32 |" in report
