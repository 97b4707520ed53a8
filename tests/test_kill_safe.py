"""Kill-safe (issue 13): a run SIGKILLed mid-training and resumed from `last.ckpt` ends as an uninterrupted one; a kill
while a checkpoint or a behaviour batch is written leaves what was there before usable.

The killed runs are subprocesses (`kill_runs.py`), so the SIGKILL is real; the runs compared with them run here.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch
from behaviour_helpers import write_behaviour
from determinism_runs import differences
from kill_runs import in_own_process, routing, run_online
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import TorchCheckpointIO
from test_behaviour import PAIRS, ListSource, make_pool

from rmrouter.behaviour.collect import collect_behaviour
from rmrouter.callbacks import AtomicCheckpointIO, ResumableCheckpoint
from rmrouter.callbacks import atomic_checkpoint as atomic
from rmrouter.callbacks.checkpoint import checkpoint_callback_states
from rmrouter.cli import main
from rmrouter.data.behaviour import read_behaviour
from rmrouter.data.jsonl import DataError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.fixture
def one_thread():
    """One torch thread, as in the killed subprocesses (`OMP_NUM_THREADS=1`): other thread counts may split sums
    differently and change the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


# ---- online DPO ---------------------------------------------------------------------------------------------------


class NotExact(AssertionError):
    """The resumed run differs from the uninterrupted one (the preconditions held)."""


@pytest.mark.slow
def test_a_sigkilled_online_run_resumed_from_last_ends_as_an_uninterrupted_one(
    tiny_causal_lm_dir, prior_path, tmp_path
):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_online(tiny_causal_lm_dir, prior_path, whole, "run")
    # 4 steps, last.ckpt every 2, 3 steps per epoch: killed at the end of step 3, resumed from step 2 (mid-epoch)
    broken.mkdir()
    script = [str(HERE / "kill_runs.py"), "online", tiny_causal_lm_dir, str(prior_path), str(broken), "killed"]
    killed = in_own_process(*script, "--kill-at", "3", cwd=broken)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert load(broken / "checkpoints" / "last.ckpt")["global_step"] == 2
    run_online(tiny_causal_lm_dir, prior_path, broken, "resumed", resume=True)
    expected, before, after = (routing(path) for path in (whole / "run.jsonl", broken / "killed.jsonl",
                                                          broken / "resumed.jsonl"))  # fmt: skip
    assert sorted(before) == [1, 2, 3] and sorted(after) == [3, 4]
    assert {step: before[step] for step in (1, 2)} == {step: expected[step] for step in (1, 2)}
    # the same routed RMs and per-pair losses at every step, the same posteriors, normaliser, RNG and trained weights
    if {**before, **after} != expected:
        raise NotExact(f"routing after the resume: {after} != {expected}")
    found = differences(load(whole / "run.pt"), load(broken / "resumed.pt"))
    if found:
        raise NotExact(f"final states differ at {found}")


@pytest.mark.slow
def test_a_kill_while_last_ckpt_is_written_leaves_the_previous_one_and_the_run_resumes(tiny_causal_lm_dir, prior_path,
                                                                                       tmp_path):  # fmt: skip
    script = [str(HERE / "kill_runs.py"), "online", tiny_causal_lm_dir, str(prior_path), str(tmp_path), "killed"]
    killed = in_own_process(*script, "--die-writing-at", "4", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    folder = tmp_path / "checkpoints"
    (orphan,) = folder.glob(".last.ckpt.*.partial")  # the half-written step 4, never renamed
    assert 0 < orphan.stat().st_size
    assert load(folder / "last.ckpt")["global_step"] == 2  # the previous one, whole
    run_online(tiny_causal_lm_dir, prior_path, tmp_path, "resumed", resume=True)
    assert load(folder / "last.ckpt")["global_step"] == 4
    assert sorted(path.name for path in folder.iterdir()) == ["last.ckpt"]  # the orphan went with the next save


# ---- atomic checkpoint writes -------------------------------------------------------------------------------------


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic.atomic_torch_save({"step": 1}, path)
    (tmp_path / ".last.ckpt.123-abcd.partial").write_bytes(b"left by a killed writer")
    atomic.atomic_torch_save({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as a plain open makes it, not mkstemp's 0600

    def half_then_crash(obj, handle):
        handle.write(b"\x80\x02half a pickle")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_write_and_sync", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_torch_save({"step": 3}, path)
    assert load(path) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_lightnings_default_io_stages_checkpoints_in_the_system_temp_folder(tmp_path, monkeypatch):
    # the upstream behaviour AtomicCheckpointIO exists for: a temp file elsewhere is a copy, not a rename, on
    # another file system; when this fails, Lightning writes next to the target and the plugin may go
    import fsspec.implementations.local as local

    folders, mkstemp = [], local.tempfile.mkstemp
    monkeypatch.setattr(local.tempfile, "mkstemp", lambda *a, **k: (folders.append(k.get("dir")), mkstemp(*a, **k))[1])
    TorchCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert folders == [None] and load(tmp_path / "last.ckpt") == {"step": 1}


def test_the_project_checkpoint_callback_makes_every_save_atomic(tmp_path):
    def trainer(**kwargs) -> Trainer:
        checkpoint = ResumableCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
        return Trainer(default_root_dir=tmp_path, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                       enable_model_summary=False, max_steps=1, limit_val_batches=0, **kwargs)  # fmt: skip

    default = trainer()
    default.fit(BoringModel())
    assert type(default.strategy.checkpoint_io) is AtomicCheckpointIO and load(tmp_path / "last.ckpt")["global_step"]

    class Chosen(TorchCheckpointIO):
        pass

    chosen = trainer(plugins=[Chosen()])
    chosen.fit(BoringModel())
    assert type(chosen.strategy.checkpoint_io) is Chosen  # a trainer's own IO is kept


# ---- offline router -----------------------------------------------------------------------------------------------


def offline_fit(tiny_encoder_dir: str, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / "offline_router.yaml"), "--model.init_args.encoder",
            tiny_encoder_dir, "--trainer.max_epochs", "4", "--data.init_args.batch_size", "8",
            "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


def trained_state(checkpoint: dict) -> dict:
    (saved,) = checkpoint_callback_states(checkpoint)
    best = saved["best_model_score"]
    keys = ("epoch", "global_step", "state_dict", "optimizer_states")
    return {**{key: checkpoint[key] for key in keys}, "best_model_score": best}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_sigkilled_offline_router_fit_resumed_from_last_ends_as_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                       tiny_encoder_dir):  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for folder in (whole, broken):
        write_behaviour(folder / "checkpoints" / "behaviour" / "default.jsonl")
    monkeypatch.chdir(whole)
    main(offline_fit(tiny_encoder_dir))
    # 3 steps per epoch, last.ckpt at each epoch's end: killed in epoch 2, so it resumes from the end of epoch 1
    kill = ["--trainer.callbacks+=kill_runs.KillAt", "--trainer.callbacks.step=7"]
    killed = in_own_process(str(ROOT / "cli.py"), *offline_fit(tiny_encoder_dir, *kill), cwd=broken)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    last = Path("checkpoints") / "offline_router" / "last.ckpt"
    assert load(broken / last)["global_step"] == 6
    monkeypatch.chdir(broken)
    main(offline_fit(tiny_encoder_dir, "--ckpt_path", "last"))
    assert differences(trained_state(load(whole / last)), trained_state(load(broken / last))) == []


# ---- behaviour collection -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--kill-in-batch", "--tear-in-batch"])
def test_a_sigkilled_collection_resumes_scoring_only_the_rest(tmp_path, how):
    whole = tmp_path / "whole.jsonl"
    collect_behaviour(make_pool(), [ListSource(PAIRS)], whole, table=None, batch_size=2)
    output = tmp_path / "killed.jsonl"
    killed = in_own_process(str(HERE / "kill_runs.py"), "collect", str(output), how, "2", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    left, done = output.read_bytes(), whole.read_bytes()
    if how == "--kill-in-batch":  # killed while batch 2 was scored: batch 1's two lines, whole
        assert left == b"".join(done.splitlines(keepends=True)[:2])
    else:  # killed while batch 2's lines were written: half of them on disk, the last one unfinished
        assert done.startswith(left) and left.count(b"\n") >= 2 and not left.endswith(b"\n")
        with pytest.raises(DataError, match=r"killed\.jsonl:\d+: the last line is unfinished .* run the collection"):
            read_behaviour(output)
    pool = make_pool()
    collect_behaviour(pool, [ListSource(PAIRS)], output, table=None, batch_size=2)
    assert pool[0].rows_scored == 2 * 3  # batches 2 and 3 (3 pairs), both sides: batch 1 is not scored again
    assert output.read_bytes() == whole.read_bytes()
