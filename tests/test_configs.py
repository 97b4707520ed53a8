"""Every shipped YAML parses and builds; the pipeline runs its stages and skips what is done."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from data_helpers import sources_of
from jsonargparse import ArgumentParser

from rmrouter.behaviour.collect import collect_behaviour
from rmrouter.cli import main
from rmrouter.data.behaviour import read_behaviour
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.pipeline import run_pipeline
from rmrouter.reward_models import RewardModelPool

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture
def tiny_models(tiny_causal_lm_dir, tiny_encoder_dir, tiny_classifier_dir, tiny_learned_checkpoint):
    """Which tiny stand-in replaces the real model of each RM class in a shipped pool."""
    return {
        "LikelihoodRewardModel": {"model": tiny_causal_lm_dir},
        "ReferenceSimilarityRewardModel": {"model": tiny_encoder_dir},
        "SequenceClassifierRewardModel": {"model": tiny_classifier_dir},
        "LearnedRewardModel": {"checkpoint": tiny_learned_checkpoint},
    }


def with_tiny_models(pool: dict, tiny_models: dict) -> dict:
    pool = copy.deepcopy(pool)
    for entry in pool["init_args"]["reward_models"]:
        entry["init_args"].update(tiny_models.get(entry["class_path"].rsplit(".", 1)[-1], {}))
    return pool


def build_pool(spec: dict) -> RewardModelPool:
    parser = ArgumentParser()
    parser.add_argument("--pool", type=RewardModelPool)
    return parser.instantiate_classes(parser.parse_object({"pool": spec})).pool


def test_default_pool_builds_with_tiny_models_and_every_rm_scores(tiny_models):
    spec = yaml.safe_load((CONFIGS / "pool" / "default.yaml").read_text())
    pool = build_pool(with_tiny_models(spec, tiny_models))
    assert pool.names == ["length", "smollm2-likelihood", "minilm-reference", "minilm-bt-safety", "minilm-bt-chat",
                          "minilm-bt-math"]  # fmt: skip
    margins = pool.margins(["What is 2 + 2?"] * 2, ["4. #### 4", "no idea"], ["5. #### 5", "four"], ["#### 4", None])
    assert margins.shape == (2, 6)
    assert margins[0].isfinite().all()  # with a reference every RM judges
    assert margins[1].isnan().tolist() == [False, False, True, False, False, False]  # without one, one RM cannot


def test_the_pool_with_the_verifier_is_the_default_pool_plus_the_verifier(tiny_models):
    default = yaml.safe_load((CONFIGS / "pool" / "default.yaml").read_text())
    spec = yaml.safe_load((CONFIGS / "pool" / "with_verifier.yaml").read_text())
    assert spec["init_args"]["reward_models"][:-1] == default["init_args"]["reward_models"]
    pool = build_pool(with_tiny_models(spec, tiny_models))
    assert pool.names[-1] == "gsm8k-verifier" and len(pool) == 7


def test_behaviour_config_parses_and_its_sources_load():
    parser = ArgumentParser()
    parser.add_function_arguments(collect_behaviour, sub_configs=True)
    config = parser.parse_path(str(CONFIGS / "behaviour.yaml"))  # parsing checks every key and type, builds nothing
    assert build_pool_names(config.pool.as_dict()) == build_pool_names(
        yaml.safe_load((CONFIGS / "pool" / "default.yaml").read_text())
    )
    raw = yaml.safe_load((CONFIGS / "behaviour.yaml").read_text())
    raw.pop("pool")  # the real pool needs the real models; the sources are what is checked here
    data_parser = ArgumentParser()
    data_parser.add_function_arguments(collect_behaviour, skip={"pool"})
    data = data_parser.instantiate_classes(data_parser.parse_object(raw)).data
    # the two GSM8K sources: pairs of any two solutions, and ood pairs of the 6B model on other questions
    in_distribution, ood = (source.load() for source in data[:2])
    assert {pair.source for pair in in_distribution} == {"gsm8k/example_model_solutions"}
    assert {pair.source for pair in ood} == {"gsm8k/example_model_solutions/6b"}
    assert len(in_distribution) == 120 and len(ood) == 60
    assert not {pair.prompt[0]["content"] for pair in in_distribution} & {pair.prompt[0]["content"] for pair in ood}
    assert split_named_by(CONFIGS / "offline_router.yaml").ood_sources == ["gsm8k/example_model_solutions/6b"]
    for source in data:
        source.limit = 3
    pairs = [pair for source in data for pair in source.load()]
    assert len(pairs) == 15
    assert [pair.domain for pair in pairs[:9]] == ["math"] * 6 + ["safety"] * 3


def test_the_main_jobs_behaviour_pairs_are_a_slice_of_the_large_set():
    large = {pair.id for source in sources_of(CONFIGS / "behaviour_large.yaml", ["data"]) for pair in source.load()}
    main = {pair.id for source in sources_of(CONFIGS / "behaviour.yaml", ["data"]) for pair in source.load()}
    assert len(large) > 3000 and len(main) == 540 and main <= large


def test_no_behaviour_or_online_prompt_was_trained_or_selected_on_by_a_learned_rm():
    from rmrouter.data.sources import split_key

    behaviour = {split_key(pair) for source in sources_of(CONFIGS / "behaviour_large.yaml", ["data"])
                 for pair in source.load()}  # fmt: skip
    online = sources_of(CONFIGS / "online" / "live.yaml", ["data", "init_args", "train"], prompts=True)
    online_keys = {split_key(prompt) for source in online for prompt in source.load()}
    assert len(online_keys) == 3 * 64
    behaviour |= online_keys
    for name in ("safety", "chat", "math"):
        config = CONFIGS / "learned_rm" / f"{name}.yaml"
        for side in ("train", "val"):
            seen = {
                split_key(pair) for source in sources_of(config, ["data", "init_args", side]) for pair in source.load()
            }
            assert seen and not seen & behaviour, (name, side)


def test_pipeline_runs_every_stage_then_skips_what_is_done(tmp_path, monkeypatch, tiny_models):
    monkeypatch.chdir(tmp_path)  # the shipped configs write under ./checkpoints and ./docs
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    learned_rms, learned_checkpoints = [], []
    for name in ("safety", "chat", "math"):
        learned = yaml.safe_load((CONFIGS / "learned_rm" / f"{name}.yaml").read_text())
        learned["model"]["init_args"]["encoder"] = tiny_models["ReferenceSimilarityRewardModel"]["model"]
        learned["trainer"]["max_epochs"] = 1
        for side in ("train", "val"):
            for source in learned["data"]["init_args"][side]:
                source["init_args"]["limit"] = 8
        (tmp_path / f"learned_{name}.yaml").write_text(yaml.safe_dump(learned))
        learned_rms.append(Path(f"learned_{name}.yaml"))
        learned_checkpoints.append(tmp_path / "checkpoints" / "learned_rm" / name / "best.ckpt")

    pool = with_tiny_models(yaml.safe_load((CONFIGS / "pool" / "default.yaml").read_text()), tiny_models)
    for entry in pool["init_args"]["reward_models"]:  # the checkpoints the pipeline's first stage trains
        if entry["class_path"].endswith("LearnedRewardModel"):
            name = entry["init_args"]["name"].removeprefix("minilm-bt-")
            entry["init_args"]["checkpoint"] = f"checkpoints/learned_rm/{name}/best.ckpt"
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(pool))
    behaviour = yaml.safe_load((CONFIGS / "behaviour.yaml").read_text())
    behaviour["pool"] = "pool.yaml"
    for source in behaviour["data"]:
        source["init_args"]["limit"] = 4
    (tmp_path / "behaviour.yaml").write_text(yaml.safe_dump(behaviour))
    offline = yaml.safe_load((CONFIGS / "offline_router.yaml").read_text())
    offline["model"]["init_args"]["encoder"] = tiny_models["ReferenceSimilarityRewardModel"]["model"]
    offline["trainer"]["max_epochs"] = 1
    # too few rows here to hold any out, and larger val and test splits so that neither is empty
    offline["data"]["init_args"]["split"] = {"fractions": {"train": 0.4, "val": 0.3, "test": 0.3}}
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(offline))
    online = yaml.safe_load((CONFIGS / "online" / "live.yaml").read_text())
    online["model"]["init_args"].update(policy=tiny_models["LikelihoodRewardModel"]["model"], pool="pool.yaml",
                                        max_new_tokens=4, num_samples=2)  # fmt: skip
    online["model"]["init_args"]["lora"]["target_modules"] = ["q_proj", "v_proj"]
    online["trainer"].update(max_steps=2, enable_progress_bar=False, precision="32-true")
    for source in online["data"]["init_args"]["train"]:
        source["init_args"]["limit"] = 2
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(online))
    stages = {
        "offline_router_config": Path("offline.yaml"),
        "online_config": Path("online.yaml"),
        "online_router_config": CONFIGS / "routers" / "bayesian.yaml",  # the prior brings the tiny encoder
    }

    checkpoint = tmp_path / "checkpoints" / "learned_rm" / "safety" / "best.ckpt"
    inputs = {path for path in tmp_path.rglob("*") if path.is_file()}
    run_pipeline(learned_rms, Path("behaviour.yaml"), **stages)
    assert all(path.is_file() for path in learned_checkpoints)  # where each config's ModelCheckpoint writes
    records = read_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl")
    assert len(records) == 20 and set(records[0].scores) == set(build_pool_names(pool))
    prior = tmp_path / "checkpoints" / "offline_router" / "prior.pt"
    assert prior.is_file() and (tmp_path / "checkpoints" / "offline_router" / "report.md").is_file()
    summary = tmp_path / "checkpoints" / "online" / "live" / "summary.md"
    assert (tmp_path / "checkpoints" / "online" / "live" / "last.ckpt").is_file()
    assert "- steps: 2 in " in summary.read_text() and "`BayesianRouter`" in summary.read_text()
    # the main job writes under checkpoints/ only: every input is as it was (the embedding store
    # is this test's own, under tmp_path; a user's is ~/.cache/rmrouter)
    written = {path for path in tmp_path.rglob("*") if path.is_file() and "embedding_cache" not in path.parts} - inputs
    assert written and all(path.relative_to(tmp_path).parts[0] == "checkpoints" for path in written), sorted(
        str(path.relative_to(tmp_path)) for path in written if path.relative_to(tmp_path).parts[0] != "checkpoints"
    )
    times = (tmp_path / "checkpoints" / "pipeline_times.md").read_text()
    for stage in ("1. learned RM (learned_safety)", "2. behaviour collection", "3. offline router", "4. online DPO"):
        assert f"| {stage}" in times, times
    assert "| total |" in times and "skipped" not in times
    assert "text embeddings (" in times and "cold at the start" in times  # this test's own store began empty

    # publishing copies the shipped config's four outputs into docs/
    main(["publish", "--config", str(CONFIGS / "publish.yaml")])
    table = (tmp_path / "docs" / "behaviour_table.md").read_text()
    assert table.startswith("_Copied by `python cli.py publish --config configs/publish.yaml` from `checkpoints/")
    assert table.endswith((tmp_path / "checkpoints" / "behaviour" / "default_table.md").read_text())
    assert (tmp_path / "docs" / "offline_router.md").is_file()
    assert (tmp_path / "docs" / "online_demo.md").read_text().endswith(summary.read_text())
    assert (tmp_path / "docs" / "main_job_times.md").read_text().endswith(times)

    trained_at = checkpoint.stat().st_mtime_ns, prior.stat().st_mtime_ns, summary.stat().st_mtime_ns
    run_pipeline(learned_rms, Path("behaviour.yaml"), **stages)
    assert (checkpoint.stat().st_mtime_ns, prior.stat().st_mtime_ns, summary.stat().st_mtime_ns) == trained_at
    times = (tmp_path / "checkpoints" / "pipeline_times.md").read_text()
    assert times.count("skipped: its output existed") == 5  # three learned RMs, the offline router, online DPO


def build_pool_names(spec: dict) -> list[str]:
    return [entry["init_args"]["name"] for entry in spec["init_args"]["reward_models"]]


@pytest.mark.parametrize("native, extra", [(True, []), (False, ["--trainer.precision", "32-true"])])
def test_the_main_jobs_online_stage_runs_in_float32_where_bfloat16_is_emulated(monkeypatch, native, extra):
    from rmrouter import pipeline
    from rmrouter.reward_models import _hf

    monkeypatch.setattr(_hf, "native_bfloat16", lambda: native)
    assert pipeline.precision_for_this_machine() == extra


def test_reports_name_the_machine(monkeypatch):
    from rmrouter import machine
    from rmrouter.reward_models import _hf

    monkeypatch.setattr(_hf, "native_bfloat16", lambda: False)
    line = machine.describe_machine()
    assert " cores, " in line and "no native bfloat16" in line and f"torch {torch.__version__}" in line


def test_the_pipeline_reads_where_each_stage_writes_from_the_config_that_writes_it(tmp_path):
    from rmrouter.pipeline import checkpoint_of, run_output

    assert checkpoint_of(CONFIGS / "learned_rm" / "safety.yaml", "best") == Path(
        "checkpoints/learned_rm/safety/best.ckpt"
    )
    prior = run_output(CONFIGS / "offline_router.yaml", "RouterPriorWriter")
    assert prior == Path("checkpoints/offline_router/prior.pt")  # the run's folder, as the callback defaults to
    router = yaml.safe_load((CONFIGS / "routers" / "bayesian.yaml").read_text())["model"]["init_args"]["router"]
    assert prior == Path(router["init_args"]["prior_path"])  # the online router reads what the offline fit writes
    assert run_output(CONFIGS / "online" / "live.yaml", "OnlineSummary") == Path("checkpoints/online/live/summary.md")
    with pytest.raises(ValueError, match="no trainer callback RouterPriorWriter"):
        run_output(CONFIGS / "online" / "live.yaml", "RouterPriorWriter")
    own = tmp_path / "own.yaml"  # a path and a dirpath of its own win over the run's folder
    own.write_text(yaml.safe_dump({"trainer": {"default_root_dir": "runs/a", "callbacks": [
        {"class_path": "rmrouter.callbacks.OnlineSummary", "init_args": {"path": "elsewhere/s.md"}},
        {"class_path": "rmrouter.callbacks.ResumableCheckpoint", "init_args": {"dirpath": "ckpts"}},
    ]}}))  # fmt: skip
    assert run_output(own, "OnlineSummary") == Path("elsewhere/s.md")
    assert checkpoint_of(own, "last") == Path("ckpts/last.ckpt")
