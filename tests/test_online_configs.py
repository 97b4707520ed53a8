"""The shipped online configs run through the CLI on tiny models: a simulated BayesianRouter fit and its resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES, write_behaviour

from rmrouter.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "online" / "simulated_bayesian.yaml"


@pytest.fixture
def tiny_config(tmp_path, monkeypatch, tiny_causal_lm_dir, tiny_encoder_dir) -> Path:
    """The shipped config with the tiny policy, and a router without the offline prior (on the tiny encoder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl", rows=16)
    config = yaml.safe_load(CONFIG.read_text())
    assert config["data"]["init_args"]["rm_names"] == RM_NAMES
    config["model"]["init_args"]["policy"] = tiny_causal_lm_dir
    router = config["trainer"]["callbacks"][0]["init_args"]
    router.update(prior_path=None, use_prior=False, encoder=tiny_encoder_dir, pooling="mean", max_length=32)
    config["trainer"]["max_steps"] = 2
    config["trainer"]["enable_progress_bar"] = False
    path = tmp_path / "simulated.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_simulated_bayesian_config_trains_and_checkpoints_the_router(tiny_config, tmp_path):
    main(["fit", "--config", str(tiny_config)])
    checkpoint = torch.load(
        tmp_path / "checkpoints" / "online" / "simulated_bayesian" / "last.ckpt", weights_only=False
    )
    assert checkpoint["global_step"] == 2
    (router_state,) = [state for key, state in checkpoint["callbacks"].items() if key.startswith("BayesianRouter")]
    assert router_state["pairs_routed"] == 16  # two batches of 8 pairs, each routed once
    assert not any(key.startswith("pool") for key in checkpoint["state_dict"])


def test_simulated_fit_resumes_with_the_router_state(tiny_config, tmp_path):
    main(["fit", "--config", str(tiny_config), "--trainer.max_steps", "1"])
    main(["fit", "--config", str(tiny_config), "--trainer.max_steps", "2", "--ckpt_path", "last"])
    checkpoint = torch.load(
        tmp_path / "checkpoints" / "online" / "simulated_bayesian" / "last.ckpt", weights_only=False
    )
    (router_state,) = [state for key, state in checkpoint["callbacks"].items() if key.startswith("BayesianRouter")]
    assert checkpoint["global_step"] == 2 and router_state["pairs_routed"] == 16  # not reset by the restart
