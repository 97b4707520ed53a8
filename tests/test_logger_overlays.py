"""configs/logger/: the overlays compose onto every shipped config, and a live online run logs to CSV, completions
included; the online progress bar shows the step's DPO loss and pairs."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml
from online_cli_helpers import CONFIGS, run_online

from rmrouter.cli import main
from rmrouter.online.logs import PROGRESS_BAR

OVERLAYS = CONFIGS / "logger"
BASES = {  # a shipped config, and what it needs besides to parse
    "learned_rm/safety.yaml": [],
    "offline_router.yaml": [],
    "online/live.yaml": ["routers/random.yaml"],
    "online/simulated.yaml": ["routers/random.yaml"],
}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, tiny_causal_lm_dir):
    """The live online run of `run_online` with the CSV overlay."""
    folder = tmp_path_factory.mktemp("csv_run")
    return folder, run_online(folder, tiny_causal_lm_dir, str(OVERLAYS / "csv.yaml"))


def printed_config(capsys, *configs: str) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(["fit", *[a for config in configs for a in ("--config", str(CONFIGS / config))], "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_csv_overlay_composes_onto_every_config(base, capsys, monkeypatch):
    # its save_dir is the run's folder, linked to trainer.default_root_dir (so not printed); the live CSV run below
    # shows where it writes
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    own = printed_config(capsys, base, *BASES[base])["trainer"]["logger"]
    assert own["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"  # the default stays TensorBoard
    assert own["init_args"]["name"] == "" and own["init_args"]["version"] == "tensorboard"
    logger = printed_config(capsys, base, *BASES[base], "logger/csv.yaml")["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert logger["init_args"]["name"] == "" and logger["init_args"]["version"] == "csv"


def test_the_mlflow_overlay_parses_without_mlflow_installed(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    logger = printed_config(capsys, "learned_rm/safety.yaml", "logger/mlflow.yaml")["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert logger["init_args"]["tracking_uri"] == "file:./checkpoints/mlruns"  # a local store: no server


def test_a_live_run_logs_metrics_and_sample_completions_to_csv(csv_run):
    folder, cli = csv_run
    log_dir = folder / "checkpoints" / "online" / "live" / "csv"
    with (log_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {"train/dpo_loss", "train/pairs", "train/eos_rate"} <= set(rows[0])
    assert [int(row["step"]) for row in rows if row["train/pairs"]] == [0, 1]
    lines = [json.loads(line) for line in (log_dir / "samples.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1]  # log_text_every_n_steps: 1
    shown = lines[0]["samples"]
    assert len(shown) == 2 and len(shown[0]["completions"]) == 4  # the first two prompts, k = 4 samples each
    assert {"text", "ended"} == set(shown[0]["completions"][0]) and shown[0]["prompt"]
    summary = (folder / "checkpoints" / "online" / "live" / "summary.md").read_text()
    assert "- CSV logs: `" in summary and "TensorBoard" not in summary
    assert not (folder / "checkpoints" / "online" / "live" / "tensorboard").exists()


def test_the_online_progress_bar_shows_the_dpo_loss_and_pairs(csv_run):
    _, cli = csv_run
    shown = cli.trainer.progress_bar_metrics
    assert PROGRESS_BAR <= set(shown), sorted(shown)
    assert "train/implicit_kl" not in shown  # the rest stays in the logs
