"""The shipped offline-router config through the CLI: fit, test (results table), resume, and the prior artifact."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES, write_behaviour

from rmrouter.cli import main
from rmrouter.modules.offline_router import OfflineRouterModule
from rmrouter.routers.prior import RouterPrior, RouterPriorError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "offline_router.yaml"


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_encoder_dir):
    monkeypatch.chdir(tmp_path)  # the config writes under ./checkpoints and ./docs
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl")
    return tmp_path


def cli(*args: str, encoder: str, epochs: int = 2) -> None:
    main([*args, "--config", str(CONFIG), "--model.init_args.encoder", encoder, "--trainer.max_epochs", str(epochs),
          "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false"])  # fmt: skip


def test_fit_writes_checkpoints_and_a_prior_the_pool_must_match(workdir, tiny_encoder_dir):
    cli("fit", encoder=tiny_encoder_dir)
    for name in ("best.ckpt", "last.ckpt", "prior.pt"):
        assert (workdir / "checkpoints" / "offline_router" / name).is_file()
    assert (workdir / "checkpoints" / "offline_router" / "tensorboard").is_dir()
    prior = RouterPrior.load(workdir / "checkpoints" / "offline_router" / "prior.pt")
    assert prior.rm_names == RM_NAMES and prior.encoder == tiny_encoder_dir
    torch.testing.assert_close(prior.bt_embeddings.norm(dim=-1), torch.ones(len(RM_NAMES)))
    prior.check_pool(RM_NAMES)
    with pytest.raises(RouterPriorError):
        prior.check_pool(list(reversed(RM_NAMES)))


def test_validate_and_test_from_a_checkpoint_write_metrics_and_the_results_table(workdir, tiny_encoder_dir, capsys):
    cli("fit", encoder=tiny_encoder_dir)
    capsys.readouterr()
    cli("validate", "--ckpt_path", "checkpoints/offline_router/best.ckpt", encoder=tiny_encoder_dir)
    assert "val/router_acc" in capsys.readouterr().out
    cli("test", "--ckpt_path", "checkpoints/offline_router/best.ckpt", encoder=tiny_encoder_dir)
    report = (workdir / "checkpoints" / "offline_router" / "report.md").read_text()
    assert "| method | test | ood | ood/koala | ood/math |" in report and "| router (argmax BT) |" in report
    # 12 koala rows and 3 math rows are held out; RM 2 is always right on koala, RM 0 on math
    assert "koala subset" in report  # the config's `about` paragraph
    assert "| rows | " in report and re.search(r"\| rows \| \d+ \| 15 \| 12 \| 3 \|", report)
    assert re.search(rf"\| single: {RM_NAMES[2]} \| [0-9.]+ \| 80\.0 \| 100\.0 \| 0\.0 \|", report)
    assert re.search(rf"\| single: {RM_NAMES[0]} \| [0-9.]+ \| 20\.0 \| 0\.0 \| 100\.0 \|", report)


def test_resume_from_last_continues_where_it_stopped(workdir, tiny_encoder_dir):
    cli("fit", encoder=tiny_encoder_dir, epochs=1)
    last = workdir / "checkpoints" / "offline_router" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    cli("fit", "--ckpt_path", "last", encoder=tiny_encoder_dir, epochs=2)
    second = torch.load(last, weights_only=False)
    assert second["epoch"] > first["epoch"]
    assert second["global_step"] == 2 * first["global_step"]


def test_a_fast_dev_run_trains_one_batch_and_leaves_the_real_runs_files_alone(workdir, tiny_encoder_dir):
    cli("fit", encoder=tiny_encoder_dir)
    cli("test", "--ckpt_path", "checkpoints/offline_router/best.ckpt", encoder=tiny_encoder_dir)
    outputs = [*(workdir / "checkpoints" / "offline_router").rglob("*")]
    before = {path: path.read_bytes() for path in outputs if path.is_file()}
    assert {path.name for path in before} >= {"best.ckpt", "last.ckpt", "prior.pt", "report.md"}

    cli("fit", "--trainer.fast_dev_run", "true", "--seed_everything", "1", encoder=tiny_encoder_dir)
    cli("test", "--trainer.fast_dev_run", "true", "--ckpt_path", "checkpoints/offline_router/best.ckpt",
        encoder=tiny_encoder_dir)  # fmt: skip
    after = [*(workdir / "checkpoints" / "offline_router").rglob("*")]
    assert {path: path.read_bytes() for path in after if path.is_file()} == before


def test_the_prior_holds_the_weights_of_the_checkpoint_model_selection_kept(workdir, tiny_encoder_dir):
    # monitor the step, lowest first: epoch 0 is "best", and two more epochs move the weights away from it
    config = yaml.safe_load(CONFIG.read_text())
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"].update(monitor="step", mode="min")
    override = workdir / "best_first.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    main(["fit", "--config", str(CONFIG), "--config", str(override), "--model.init_args.encoder", tiny_encoder_dir,
          "--trainer.max_epochs", "3", "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false",
          "--model.init_args.learning_rate", "0.05"])  # fmt: skip
    folder = workdir / "checkpoints" / "offline_router"
    prior = RouterPrior.load(folder / "prior.pt")
    best = OfflineRouterModule.load_from_checkpoint(folder / "best.ckpt", weights_only=True).prior_state()
    last = OfflineRouterModule.load_from_checkpoint(folder / "last.ckpt", weights_only=True).prior_state()
    assert torch.equal(prior.bt_embeddings, best["bt_embeddings"]) and prior.bt_scale == best["bt_scale"]
    assert prior.mlp_state.keys() == best["mlp_state"].keys()
    assert all(torch.equal(prior.mlp_state[key], value) for key, value in best["mlp_state"].items())
    assert not torch.equal(prior.bt_embeddings, last["bt_embeddings"])  # the fit went on past the selected epoch
    assert prior.metadata["selected"].endswith("offline_router/best.ckpt")
    assert prior.metadata["epoch"] == 0 and prior.metadata["monitor"] == "step" and prior.metadata["step"] > 0
    assert torch.load(folder / "last.ckpt", weights_only=False)["epoch"] == 2


def test_predict_writes_one_routing_decision_per_test_row(workdir, tiny_encoder_dir):
    from rmrouter.callbacks.routing_predictions import read_predictions

    cli("fit", encoder=tiny_encoder_dir)
    cli("predict", "--ckpt_path", "checkpoints/offline_router/best.ckpt", encoder=tiny_encoder_dir)
    header, rows = read_predictions(workdir / "checkpoints" / "offline_router" / "predictions.jsonl")
    assert header["rm_names"] == RM_NAMES and header["checkpoint"].endswith("best.ckpt")
    by_split = {split: [row for row in rows if row["split"] == split] for split in {row["split"] for row in rows}}
    assert sorted(by_split) == ["ood", "ood/koala", "ood/math", "test"]
    assert len(by_split["ood"]) == 15 and len(by_split["ood/koala"]) == 12  # write_behaviour's held-out rows
    for row in rows:
        assert len(row["scores"]) == len(RM_NAMES) and row["eligible"][row["routed"]]
        assert row["routed"] == max(range(len(RM_NAMES)), key=lambda n: row["scores"][n])  # every RM can judge here
    assert all(row["right"][2] for row in by_split["ood/koala"])  # write_behaviour: RM 2 is right on koala


def test_test_validate_and_predict_evaluate_every_row_of_another_file(workdir, tiny_encoder_dir, capsys):
    from rmrouter.callbacks.routing_predictions import read_predictions

    cli("fit", encoder=tiny_encoder_dir)
    folder = workdir / "checkpoints" / "offline_router"
    write_behaviour(workdir / "other.jsonl", rows=10)  # its koala and math rows would be ood in the config
    other = ["--data.init_args.path", "other.jsonl", "--data.init_args.evaluate_all", "true"]

    def on_other(command: str, *args: str) -> None:  # data options after the config that names the DataModule
        main([command, "--config", str(CONFIG), *args, "--model.init_args.encoder", tiny_encoder_dir, *other,
              "--trainer.enable_progress_bar", "false"])  # fmt: skip

    best = ("--ckpt_path", "checkpoints/offline_router/best.ckpt")
    capsys.readouterr()
    on_other("validate", *best)
    assert "val/router_acc" in capsys.readouterr().out
    on_other("test", *best)
    report = (folder / "report.other.md").read_text()
    assert "| method | test |\n" in report and "| rows | 10 |" in report
    assert "Every row of `other.jsonl` is evaluated" in report and "koala subset" not in report
    assert not (folder / "report.md").exists()  # the main run's report is not replaced
    on_other("predict", *best)
    header, rows = read_predictions(folder / "predictions.other.jsonl")
    assert sorted(row["id"] for row in rows) == sorted(f"r{i}" for i in range(10))
    assert {row["split"] for row in rows} == {"test"} and not (folder / "predictions.jsonl").exists()
    with pytest.raises(ValueError, match="evaluate_all"):
        on_other("fit")


def test_a_run_resumed_in_another_folder_writes_the_prior_of_its_own_best_checkpoint(workdir, tiny_encoder_dir):
    """A run copied to a new folder and resumed there must not follow its restored best path back to the old folder,
    which may hold another run's best.ckpt by then; without its own best.ckpt it fails, naming both paths."""
    config = yaml.safe_load(CONFIG.read_text())

    def run(folder: str, *args: str) -> None:
        callbacks = config["trainer"]["callbacks"]  # they write in the run's folder, `folder`
        for callback in callbacks:
            if callback["class_path"].endswith("ResumableCheckpoint"):
                callback["init_args"].update(monitor="step", mode="min")  # epoch 0 stays the best
        overlay = workdir / f"{folder.replace('/', '_')}.yaml"
        overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "default_root_dir": folder}}))
        main(["fit", "--config", str(CONFIG), "--config", str(overlay), "--model.init_args.encoder", tiny_encoder_dir,
              "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false",
              "--model.init_args.learning_rate", "0.05", "--trainer.logger", "false", *args])  # fmt: skip

    run("old", "--trainer.max_epochs", "2")
    (workdir / "moved").mkdir()
    for name in ("best.ckpt", "last.ckpt"):
        (workdir / "moved" / name).write_bytes((workdir / "old" / name).read_bytes())
    run("other", "--trainer.max_epochs", "2", "--seed_everything", "7")
    (workdir / "old" / "best.ckpt").write_bytes((workdir / "other" / "best.ckpt").read_bytes())  # another run's

    run("moved", "--trainer.max_epochs", "2", "--ckpt_path", "moved/last.ckpt")  # finished: no new best to save
    prior = RouterPrior.load(workdir / "moved" / "prior.pt")
    own = OfflineRouterModule.load_from_checkpoint(workdir / "moved" / "best.ckpt", weights_only=True).prior_state()
    other = RouterPrior.load(workdir / "other" / "prior.pt")
    assert torch.equal(prior.bt_embeddings, own["bt_embeddings"])
    assert not torch.equal(prior.bt_embeddings, other.bt_embeddings)
    assert Path(prior.metadata["selected"]) == workdir / "moved" / "best.ckpt"
    assert prior.metadata["step"] == prior.metadata["global_step"]  # the score saved with that file, not NaN

    (workdir / "moved" / "best.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=r"the monitored best checkpoint \S*moved/best.ckpt is missing"):
        run("moved", "--trainer.max_epochs", "2", "--ckpt_path", "moved/last.ckpt")
