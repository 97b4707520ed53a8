"""Every shipped online and router config runs through the CLI on tiny models; the router state survives a resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES, write_behaviour

from rmrouter.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIMULATED = CONFIGS / "online" / "simulated.yaml"
SPLIT = CONFIGS / "splits" / "default.yaml"
ROUTERS = sorted(path.stem for path in (CONFIGS / "routers").glob("*.yaml"))
VARIANTS = sorted((CONFIGS / "routers" / "bayesian_variants").glob("*.yaml"))


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_causal_lm_dir, tiny_encoder_dir) -> Path:
    """A behaviour file, the offline priors on the tiny encoder, and the simulated config on the tiny policy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl", rows=24)
    for offline in ("offline_router.yaml", "offline_router_task.yaml"):  # the priors of bayesian and task_bayesian
        main(["fit", "--config", str(CONFIGS / offline), "--model.init_args.encoder", tiny_encoder_dir,
              "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    config = yaml.safe_load(SIMULATED.read_text())
    assert config["data"]["init_args"]["rm_names"] == RM_NAMES
    config["model"]["init_args"]["policy"] = tiny_causal_lm_dir
    config["trainer"].update(max_steps=2, enable_progress_bar=False)
    # all 24 rows, so each step has 4 pairs (the shipped config routes only the test and ood rows of a large file)
    config["data"]["init_args"].update(batch_size=4, train_splits=["train", "val", "test", "ood"])
    config["data"]["init_args"]["split"] = str(SPLIT)  # a copy elsewhere names the shipped split file
    (tmp_path / "simulated.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_the_simulation_routes_only_pairs_the_offline_prior_never_trained_on():
    simulated = yaml.safe_load(SIMULATED.read_text())["data"]["init_args"]
    offline = yaml.safe_load((CONFIGS / "offline_router.yaml").read_text())["data"]["init_args"]
    assert {key: simulated[key] for key in ("path", "rm_names")} == {key: offline[key] for key in ("path", "rm_names")}
    # one split file, named by both configs (each path relative to its own config)
    assert (SIMULATED.parent / simulated["split"]).resolve() == (CONFIGS / offline["split"]).resolve()
    assert simulated["train_splits"] == ["test", "ood"]


def router_config(name: str, workdir: Path, tiny_encoder_dir: str) -> Path:
    config = yaml.safe_load((CONFIGS / "routers" / f"{name}.yaml").read_text())
    router = config["model"]["init_args"]["router"]["init_args"]
    assert "rm_names" not in router  # the router takes the behaviour file's RMs (data.init_args.rm_names)
    if "encoder" in router:
        router["encoder"] = tiny_encoder_dir
    if "split" in router:
        router["split"] = str(SPLIT)
    path = workdir / f"router_{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def router_state(workdir: Path) -> dict:
    checkpoint = torch.load(workdir / "checkpoints" / "online" / "simulated" / "last.ckpt", weights_only=False)
    (state,) = [state for key, state in checkpoint["callbacks"].items() if "Router[" in key]
    return {"global_step": checkpoint["global_step"], **state}


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_config_trains_in_the_simulated_mode(workdir, tiny_encoder_dir, name):
    main(
        [
            "fit",
            "--config",
            str(workdir / "simulated.yaml"),
            "--config",
            str(router_config(name, workdir, tiny_encoder_dir)),
        ]
    )
    state = router_state(workdir)
    assert state["global_step"] == 2 and state["pairs_routed"] == 8  # two batches of 4 pairs, each routed once
    if name == "cascade":  # the first RM on every pair, a second one on some
        assert 8 < state["rm_calls"] <= 16
        return
    calls_per_pair = len(RM_NAMES) if name in ("majority", "uwo") else 1
    assert state["rm_calls"] == 8 * calls_per_pair


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda path: path.stem)
def test_each_bayesian_variant_is_an_overlay_that_flips_only_its_own_switches(variant):
    base = yaml.safe_load((CONFIGS / "routers" / "bayesian.yaml").read_text())["model"]["init_args"]["router"]
    overlay = yaml.safe_load(variant.read_text())
    switches = overlay["model"]["init_args"]["router"]["init_args"]
    assert set(overlay) == {"model"} and "class_path" not in overlay["model"]["init_args"]["router"]
    assert switches and set(switches) <= set(base["init_args"])
    assert all(base["init_args"][key] != value for key, value in switches.items())  # each line changes something


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda path: path.stem)
def test_each_bayesian_variant_trains_in_the_simulated_mode_on_top_of_bayesian(workdir, tiny_encoder_dir, variant):
    main(["fit", "--config", str(workdir / "simulated.yaml"), "--config",
          str(router_config("bayesian", workdir, tiny_encoder_dir)), "--config", str(variant)])  # fmt: skip
    state = router_state(workdir)
    assert state["global_step"] == 2 and state["pairs_routed"] == 8
    saved = yaml.safe_load(
        (workdir / "checkpoints" / "online" / "simulated" / "tensorboard" / "config.yaml").read_text()
    )
    router = saved["model"]["init_args"]["router"]
    switches = yaml.safe_load(variant.read_text())["model"]["init_args"]["router"]["init_args"]
    assert router["class_path"].endswith("BayesianRouter")
    assert {key: router["init_args"][key] for key in switches} == switches  # the overlay's values were the run's


def test_simulated_fit_resumed_after_a_stop_equals_an_uninterrupted_one(workdir, tiny_encoder_dir):
    configs = [
        "--config",
        str(workdir / "simulated.yaml"),
        "--config",
        str(router_config("bayesian", workdir, tiny_encoder_dir)),
        "--config",
        str(CONFIGS / "trainer" / "cpu.yaml"),
        # the 6 koala rows in batches of 2: 3 steps per epoch, so 5 steps cross into a second epoch
        "--data.init_args.train_splits=[ood]",
        "--data.init_args.batch_size=2",
    ]
    last = workdir / "checkpoints" / "online" / "simulated" / "last.ckpt"
    main(["fit", *configs, "--trainer.max_steps", "5"])
    uninterrupted = torch.load(last, weights_only=False)
    last.unlink()
    main(["fit", *configs, "--trainer.max_steps", "2"])  # stopped in mid-epoch...
    main(["fit", *configs, "--trainer.max_steps", "5", "--ckpt_path", "last"])  # ...and resumed
    resumed = torch.load(last, weights_only=False)

    assert resumed["global_step"] == uninterrupted["global_step"] == 5
    (loader,) = uninterrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["_sampler_iter_state"]["sampler_state"] == {"epoch": 1, "yielded": 4}
    (key,) = [key for key in uninterrupted["callbacks"] if "Router[" in key]
    assert resumed["callbacks"][key]["pairs_routed"] == 10  # 5 batches of 2: not reset by the restart
    # same batches in the same order (the loader's position is restored), so the same losses, posteriors and weights
    torch.testing.assert_close(resumed["callbacks"][key], uninterrupted["callbacks"][key], rtol=0, atol=0)
    torch.testing.assert_close(resumed["state_dict"], uninterrupted["state_dict"], rtol=0, atol=0)


def test_a_fast_dev_run_leaves_the_real_runs_checkpoint_summary_and_tally_alone(workdir, tiny_encoder_dir):
    folder = workdir / "checkpoints" / "online" / "simulated"
    args = [
        "fit", "--config", str(workdir / "simulated.yaml"),
        "--config", str(router_config("bayesian", workdir, tiny_encoder_dir)),
        "--trainer.callbacks+=rmrouter.callbacks.OnlineSummary", f"--trainer.callbacks.path={folder / 'summary.md'}",
        "--trainer.callbacks+=rmrouter.callbacks.LabellingTally", f"--trainer.callbacks.path={folder / 'tally.json'}",
    ]  # fmt: skip
    main(args)
    before = {path: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert {path.name for path in before} == {"last.ckpt", "summary.md", "tally.json"}
    main([*args, "--trainer.fast_dev_run=true", "--seed_everything=1"])
    assert {path: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_two_process_ddp_run_leaves_identical_router_state_on_both_ranks(workdir, tiny_encoder_dir):
    """`python cli.py fit` with configs/trainer/ddp_cpu.yaml: 2 gloo processes, as a user would run it."""
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, str(root / "cli.py"), "fit", "--config", str(workdir / "simulated.yaml"),
        "--config", str(router_config("bayesian", workdir, tiny_encoder_dir)),
        "--config", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--trainer.callbacks+=router_state_dump.DumpRouterState", f"--trainer.callbacks.folder={workdir / 'states'}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    first, second = (torch.load(workdir / "states" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert first["pairs_routed"] == 2 * 2 * 4  # both ranks' pairs: 2 steps of 4 pairs on each of 2 ranks
    assert_identical(first, second)
    assert "posteriors" in first and first["normalizer"]["history"].numel() > 0  # the router did learn


def assert_identical(first, second, where: str = "state") -> None:
    """Equal values, with tensors compared element by element (bit for bit)."""
    assert type(first) is type(second), where
    if isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_identical(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    else:
        assert first == second, where


def test_an_online_config_without_a_router_is_refused_before_any_model_loads(workdir, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(workdir / "simulated.yaml")])
    assert "the following arguments are required: router" in capsys.readouterr().err
