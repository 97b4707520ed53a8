"""Every YAML file under configs/ parses as what it is: a LightningCLI config alone or composed with the configs it is
documented to compose with, a job's config, a pool, or a split. A config no test reads would rot unseen; the classes
they name are built by the tests of each stage (tiny models), this file checks every key is known and well typed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from rmrouter.cli import main
from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.reward_models import RewardModelPool

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# What each overlay composes onto (docs/guides/configs.md, "What composes with what"), and what else a config needs.
ONLINE = ["online/simulated.yaml"]
COMPOSED = {
    "routers": ONLINE,
    "routers/bayesian_variants": [*ONLINE, "routers/bayesian.yaml"],
    "trainer": ["offline_router.yaml"],
    "logger": ["offline_router.yaml"],
    "evaluation/downstream.yaml": ["evaluation/policy.yaml"],
    "paper/bayesian.yaml": ["paper/online_dpo.yaml"],
}
NEEDS = {
    "online/live.yaml": ["routers/random.yaml"],
    "online/simulated.yaml": ["routers/random.yaml"],
    "paper/online_dpo.yaml": ["paper/bayesian.yaml"],
}
LIGHTNING_COMMAND = {"evaluation": "test"}
JOBS = {  # the project's own commands, by config file
    "behaviour.yaml": "collect", "behaviour_large.yaml": "collect", "behaviour_llmbar.yaml": "collect",
    "paper/behaviour.yaml": "collect", "pipeline.yaml": "pipeline", "publish.yaml": "publish", "sweep.yaml": "sweep",
    "report.yaml": "report", "reproduce.yaml": "reproduce", "serve.yaml": "serve",
}  # fmt: skip
SHIPPED = sorted(str(path.relative_to(CONFIGS)) for path in CONFIGS.rglob("*.yaml"))


def kind(name: str) -> str:
    if name in JOBS:
        return "job"
    if name.startswith(("pool/", "splits/")) or name == "paper/pool.yaml":
        return name.split("/")[-2] if name != "paper/pool.yaml" else "pool"
    return "lightning"


def printed(capsys, command: str, configs: list[str]) -> dict:
    with pytest.raises(SystemExit) as stop:
        main([command, *[arg for config in configs for arg in ("--config", str(CONFIGS / config))], "--print_config"])
    assert stop.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_parses(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.chdir(ROOT)  # the jobs' configs name files relative to the repository
    if kind(name) == "job":
        assert printed(capsys, JOBS[name], [name])
    elif kind(name) == "pool":
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--pool", type=RewardModelPool)
        spec = yaml.safe_load((CONFIGS / name).read_text())
        assert parser.parse_object({"pool": spec}).pool.class_path.endswith("RewardModelPool")
    elif kind(name) == "splits":
        split = BehaviourSplit(**yaml.safe_load((CONFIGS / name).read_text()))
        assert split.fractions["train"] > 0 and split.holds_out
    else:
        folder = str(Path(name).parent)
        configs = [*COMPOSED.get(folder, COMPOSED.get(name, [])), name, *NEEDS.get(name, [])]
        command = LIGHTNING_COMMAND.get(folder, "fit")
        config = printed(capsys, command, configs)
        assert config["model"]["class_path"] and "trainer" in config


def test_a_split_file_is_read_relative_to_the_config_that_names_it(capsys, monkeypatch, tmp_path):
    # the offline router, the simulated run and routing by data label all resolve to configs/splits/default.yaml
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.chdir(tmp_path)  # not the repository: the path is the config's, not the working directory's
    expected = yaml.safe_load((CONFIGS / "splits" / "default.yaml").read_text())
    offline = printed(capsys, "fit", ["offline_router.yaml"])["data"]["init_args"]["split"]
    simulated = printed(capsys, "fit", ["online/simulated.yaml", "routers/data_label.yaml"])
    lookup = simulated["model"]["init_args"]["router"]["init_args"]["split"]
    for split in (offline, simulated["data"]["init_args"]["split"], lookup):
        assert {key: split[key] for key in expected} == expected
