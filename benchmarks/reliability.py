"""Reliability trials: runs SIGKILLed and resumed, kills while a file is written, a torn behaviour file, bad configs.

    python benchmarks/reliability.py --output docs/reliability.md

Each trial does something that goes wrong in real use and records what happened next to what should:

- online DPO (live, tiny LoRA policy, BayesianRouter on a prior) SIGKILLed after step 3 of 4, resumed from its
  step-2 `last.ckpt` with `ckpt_path="last"`, compared with an uninterrupted run: routed RMs and per-pair losses at
  every step, the router's final state and the trained weights, bit for bit;
- the same run SIGKILLed in the middle of writing its step-4 checkpoint: is the step-2 `last.ckpt` still loadable,
  and does the run resume;
- where Lightning's own `TorchCheckpointIO` stages a checkpoint before it replaces `last.ckpt`;
- the offline router's fit (`configs/offline_router.yaml`) SIGKILLed in epoch 2 and resumed from the end of epoch 1,
  compared with an uninterrupted fit: weights, optimizer state and best score;
- behaviour collection SIGKILLed between batches and in the middle of writing a batch, then run again;
- a behaviour file cut in the middle of a line, read by `read_behaviour`, fitted on by the offline router, and
  collected into again;
- bad configs through `rmrouter.cli.main`: `configs/online/live.yaml` with `configs/routers/bayesian.yaml` and one bad
  value each, run in an empty folder with `Trainer.fit` replaced by a stop, so nothing trains; the first line of what
  comes out is recorded, next to the same command without the bad value;
- the offline fit copied to another folder (another run's best.ckpt then put in the old one) and resumed where it
  finished: whose weights its prior holds, and what happens without its own best.ckpt;
- an online run's folder with a `config.yaml` a later, failed run wrote: what `export`'s card of the first run's
  checkpoint says;
- common mistakes typed in a shell (`python cli.py ...` in a process of its own): an empty behaviour file, a score of
  Infinity, a pair twice, a negative learning rate (the offline router's and the online optimizer's), a typo in a
  YAML key, RM lists in two orders, a model name that does not exist with no hub reachable: the exit code, how many
  lines it printed to stderr after Lightning's "Seed set" line, whether a traceback came, the seconds and the last
  line.

The models are the tests' tiny random-init ones (`tests/conftest.py`), and every killed run is a process of its own
(`tests/kill_runs.py`), so each SIGKILL is real; everything is written under a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import write_report

from rmrouter.callbacks.checkpoint import checkpoint_callback_states

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

from behaviour_helpers import write_behaviour  # noqa: E402
from conftest import build_tiny_tokenizer, save_tiny_causal_lm, save_tiny_encoder, write_toy_prior  # noqa: E402
from determinism_runs import differences  # noqa: E402
from kill_runs import in_own_process, routing, run_online  # noqa: E402
from test_behaviour import PAIRS, ListSource, make_pool  # noqa: E402

LIVE = ["--config", str(ROOT / "configs/online/live.yaml"), "--config", str(ROOT / "configs/routers/bayesian.yaml")]
BAD_VALUES = [[], ["--model.init_args.num_samples", "1"], ["--model.init_args.beta", "0"],
              ["--model.init_args.temperature", "0"], ["--trainer.max_steps", "0"]]  # fmt: skip


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def killed_by_sigkill(run) -> str:
    return "SIGKILLed" if run.returncode == -signal.SIGKILL else f"exit status {run.returncode}: {run.stderr[-300:]}"


def summarise(found: list[str], limit: int = 4) -> str:
    """`found` differences, grouped by their first two keys, e.g. `router.posteriors (2), trained (12)`."""
    groups: dict[str, int] = {}
    for where in found:
        key = ".".join(where.split(":")[0].strip(".").split(".")[:2])
        groups[key] = groups.get(key, 0) + 1
    shown = [f"`{key}` ({count})" for key, count in list(groups.items())[:limit]]
    return ", ".join(shown) + (" ..." if len(groups) > limit else "")


class Trials:
    def __init__(self, work: Path):
        self.work = work
        tokenizer = build_tiny_tokenizer()
        self.policy = save_tiny_causal_lm(work / "policy", tokenizer)
        self.encoder = save_tiny_encoder(work / "encoder", tokenizer)
        self.prior = write_toy_prior(work / "prior.pt", self.encoder)
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def record(self, trial: str, done: str, expected: str, happened: str, ok: bool) -> None:
        happened = happened.replace(str(self.work), "$TMP")  # the run's temporary folder
        self.rows.append((trial, done, expected, happened, ok))
        print(f"[{'ok' if ok else 'NOT OK'}] {trial}: {happened}", flush=True)

    def online_kill_and_resume(self) -> None:
        whole, broken = self.work / "online_whole", self.work / "online_killed"
        run_online(self.policy, self.prior, whole, "run")
        broken.mkdir()
        script = [str(TESTS / "kill_runs.py"), "online", self.policy, str(self.prior), str(broken), "killed"]
        killed = in_own_process(*script, "--kill-at", "3", cwd=broken)
        step = load(broken / "checkpoints" / "last.ckpt")["global_step"]
        run_online(self.policy, self.prior, broken, "resumed", resume=True)
        expected, before, after = (routing(p) for p in (whole / "run.jsonl", broken / "killed.jsonl",
                                                        broken / "resumed.jsonl"))  # fmt: skip
        steps = {**before, **after}
        same_rm = [s for s in expected if steps.get(s, {}).get("rm") == expected[s]["rm"]]
        same_loss = [s for s in expected if steps.get(s, {}).get("losses") == expected[s]["losses"]]
        found = differences(load(whole / "run.pt"), load(broken / "resumed.pt"))
        happened = (
            f"{killed_by_sigkill(killed)} after step 3; `last.ckpt` at step {step}; resumed to step 4. Same RMs routed "
            f"at steps {same_rm}, same per-pair losses at steps {same_loss} of {sorted(expected)}; final state "
            + ("identical" if not found else f"differs in {len(found)} entries: {summarise(found)}")
        )
        self.record("online DPO: SIGKILL mid-training, resume from last", "SIGKILL after step 3 of 4 (checkpoint "
                    "every 2), `fit(ckpt_path=\"last\")`", "as an uninterrupted run, bit for bit", happened,
                    not found and steps == expected)  # fmt: skip

    def online_kill_while_writing(self) -> None:
        folder = self.work / "online_torn_write"
        folder.mkdir()
        script = [str(TESTS / "kill_runs.py"), "online", self.policy, str(self.prior), str(folder), "killed"]
        killed = in_own_process(*script, "--die-writing-at", "4", cwd=folder)
        checkpoints = folder / "checkpoints"
        orphans = [p.name for p in checkpoints.glob(".*.partial")]
        try:
            previous = f"loads, step {load(checkpoints / 'last.ckpt')['global_step']}"
        except Exception as error:  # noqa: BLE001 (what a torn file raises is the result)
            previous = f"does not load ({type(error).__name__}: {str(error).splitlines()[0]})"
        run_online(self.policy, self.prior, folder, "resumed", resume=True)
        final = load(checkpoints / "last.ckpt")["global_step"]
        left = sorted(p.name for p in checkpoints.iterdir())
        happened = (f"{killed_by_sigkill(killed)} with half of step 4's checkpoint in `{orphans}`; `last.ckpt` "
                    f"{previous}; the resumed run saved step {final}, leaving {left}")  # fmt: skip
        ok = previous == "loads, step 2" and final == 4 and left == ["last.ckpt"]
        self.record("online DPO: SIGKILL while `last.ckpt` is written", "SIGKILL once half of step 4's checkpoint "
                    "is on disk, then resume", "step 2's `last.ckpt` whole; the resume ends at step 4", happened,
                    ok)  # fmt: skip

    def lightning_staging(self) -> None:
        import fsspec.implementations.local as local
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        folders, mkstemp = [], local.tempfile.mkstemp

        def recording(*args, **kwargs):
            handle, name = mkstemp(*args, **kwargs)
            folders.append(Path(name).parent)
            return handle, name

        local.tempfile.mkstemp = recording
        try:
            TorchCheckpointIO().save_checkpoint({"step": 1}, self.work / "lightning" / "last.ckpt")
        finally:
            local.tempfile.mkstemp = mkstemp
        staged = folders[0]
        same = os.stat(staged).st_dev == os.stat(self.work / "lightning").st_dev
        happened = (f"staged in `{staged}`, {'the same' if same else 'another'} file system as the checkpoint "
                    "folder here, then `shutil.move`d: a rename where they share one, else a copy into `last.ckpt` "
                    "(a kill during it tears the file); no fsync")  # fmt: skip
        self.record(
            "Lightning's `TorchCheckpointIO` (2.6)",
            "`save_checkpoint`, recording its temporary file",
            "written next to the target, fsynced, renamed",
            happened,
            staged == self.work / "lightning",
        )

    def offline_kill_and_resume(self) -> None:
        from rmrouter.cli import main

        def fit(*extra: str) -> list[str]:
            return ["fit", "--config", str(ROOT / "configs/offline_router.yaml"), "--model.init_args.encoder",
                    self.encoder, "--trainer.max_epochs", "4", "--data.init_args.batch_size", "8",
                    "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip

        def state(path: Path) -> dict:
            checkpoint = load(path)
            (saved,) = checkpoint_callback_states(checkpoint)
            kept = {key: checkpoint[key] for key in ("epoch", "global_step", "state_dict", "optimizer_states")}
            return {**kept, "best_model_score": saved["best_model_score"]}

        whole, broken = self.work / "offline_whole", self.work / "offline_killed"
        for folder in (whole, broken):
            write_behaviour(folder / "checkpoints" / "behaviour" / "default.jsonl")
        last = Path("checkpoints") / "offline_router" / "last.ckpt"
        with in_folder(whole), one_thread():
            main(fit())
        kill = ["--trainer.callbacks+=kill_runs.KillAt", "--trainer.callbacks.step=7"]
        killed = in_own_process(str(ROOT / "cli.py"), *fit(*kill), cwd=broken)
        step = load(broken / last)["global_step"]
        with in_folder(broken), one_thread():
            main(fit("--ckpt_path", "last"))
        found = differences(state(whole / last), state(broken / last))
        happened = (f"{killed_by_sigkill(killed)} at step 7 (epoch 2); `last.ckpt` at step {step}; resumed to epoch 4: "
                    + ("weights, optimizer state and best score identical" if not found
                       else f"differs in {len(found)} entries: {summarise(found)}"))  # fmt: skip
        self.record("offline router fit: SIGKILL mid-epoch, resume from last", "SIGKILL in epoch 2 of 4 (3 steps "
                    "an epoch, `last.ckpt` at each epoch's end), `--ckpt_path last`", "as an uninterrupted fit, bit "
                    "for bit", happened, not found)  # fmt: skip

    def moved_run_prior(self) -> None:
        """The offline fit's folder copied (its best and last checkpoints), another run's best.ckpt put in the old
        folder, and the copy resumed where it finished: its prior must be its own best's."""
        import yaml

        from rmrouter.cli import main
        from rmrouter.modules.offline_router import OfflineRouterModule
        from rmrouter.routers.prior import RouterPrior

        config = yaml.safe_load((ROOT / "configs/offline_router.yaml").read_text())
        folder = self.work / "moved_run"
        write_behaviour(folder / "checkpoints" / "behaviour" / "default.jsonl")

        def run(name: str, *extra: str) -> str:
            callbacks = config["trainer"]["callbacks"]  # they write in the run's folder, `name`
            for callback in callbacks:
                if callback["class_path"].endswith("ResumableCheckpoint"):
                    callback["init_args"].update(monitor="step", mode="min")  # epoch 0 stays the best
            overlay = folder / f"{name}.yaml"
            overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "default_root_dir": name}}))
            args = ["fit", "--config", str(ROOT / "configs/offline_router.yaml"), "--config", str(overlay),
                    "--model.init_args.encoder", self.encoder, "--data.init_args.batch_size", "8",
                    "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                    "--model.init_args.learning_rate", "0.05", "--trainer.max_epochs", "2", *extra]  # fmt: skip
            with in_folder(folder), one_thread():
                return first_line(lambda: main(args))

        run("old")
        (folder / "moved").mkdir()
        for name in ("best.ckpt", "last.ckpt"):
            shutil.copy(folder / "old" / name, folder / "moved" / name)
        run("other", "--seed_everything", "7")
        shutil.copy(folder / "other" / "best.ckpt", folder / "old" / "best.ckpt")
        run("moved", "--ckpt_path", "moved/last.ckpt")
        prior = RouterPrior.load(folder / "moved" / "prior.pt")
        own = OfflineRouterModule.load_from_checkpoint(folder / "moved" / "best.ckpt", weights_only=True)
        mine = torch.equal(prior.bt_embeddings, own.prior_state()["bt_embeddings"])
        (folder / "moved" / "best.ckpt").unlink()
        missing = run("moved", "--ckpt_path", "moved/last.ckpt")
        happened = (f"prior from {'its own best.ckpt' if mine else 'another file'} (metadata: `selected` "
                    f"{Path(prior.metadata['selected']).parent.name}/best.ckpt, {prior.metadata['monitor']} "
                    f"{prior.metadata.get(prior.metadata['monitor'])}); without it: {missing}")  # fmt: skip
        self.record("offline fit moved to another folder and resumed", "best and last copied to a new folder, "
                    "another run's best.ckpt in the old one, `--ckpt_path` the copy's last", "the prior of the "
                    "copy's own best; without that file an error naming it", happened,
                    mine and "is missing" in missing)  # fmt: skip

    def later_run_and_export(self) -> None:
        """A later run that fails in an online run's folder leaves a config.yaml there: the export's card of the
        earlier checkpoint must still describe the earlier run."""
        from online_cli_helpers import run_online as run_live

        from rmrouter.export import export_checkpoint

        folder = self.work / "export"
        folder.mkdir()
        with one_thread():
            run_live(folder, self.policy)
        checkpoint = folder / "checkpoints" / "online" / "live" / "last.ckpt"
        later = checkpoint.parent / "tensorboard" / "config.yaml"
        later.write_text(later.read_text().replace("rmrouter.routers.baseline_routers.RandomRouter", "a.Later"))
        card = (export_checkpoint(str(checkpoint), output=str(folder / "card")) / "README.md").read_text()
        line = next(line for line in card.splitlines() if line.startswith("- router:"))
        self.record(
            "a later run's config.yaml beside a checkpoint",
            "an online run, then its folder's config.yaml "
            "rewritten as a later failed run's (another router), then `export` of the first run's last.ckpt",
            "the card names the checkpoint's own run",
            line,
            "RandomRouter" in line and "a.Later" not in line,
        )

    def collection(self) -> None:
        from rmrouter.behaviour.collect import collect_behaviour
        from rmrouter.data.behaviour import read_behaviour

        folder = self.work / "behaviour"
        folder.mkdir()
        whole = folder / "whole.jsonl"
        collect_behaviour(make_pool(), [ListSource(PAIRS)], whole, table=None, batch_size=2)
        for how, done in (("--kill-in-batch", "SIGKILL while batch 2 of 3 is scored"),
                          ("--tear-in-batch", "SIGKILL once half of batch 2's lines are written")):  # fmt: skip
            output = folder / f"killed{how}.jsonl"
            killed = in_own_process(str(TESTS / "kill_runs.py"), "collect", str(output), how, "2", cwd=folder)
            left = output.read_bytes()
            torn = "" if left.endswith(b"\n") else ", the last one unfinished"
            lines = left.count(b"\n") + bool(torn)
            read = first_line(lambda output=output: read_behaviour(output))
            pool = make_pool()
            collect_behaviour(pool, [ListSource(PAIRS)], output, table=None, batch_size=2)
            same = output.read_bytes() == whole.read_bytes()
            happened = (f"{killed_by_sigkill(killed)}, leaving {lines} lines{torn}; reading "
                        f"it: {read}; the next collection scored {pool[0].rows_scored // 2} pairs and wrote a file "
                        f"{'identical to' if same else 'unlike'} an uninterrupted one's")  # fmt: skip
            self.record(f"behaviour collection: {how[2:].replace('-', ' ')}", done + ", then collect again",
                        "the rest scored once, the same bytes as an uninterrupted collection", happened,
                        same and pool[0].rows_scored == 2 * 3)  # fmt: skip

    def truncated_behaviour(self) -> None:
        from rmrouter.behaviour.collect import collect_behaviour
        from rmrouter.cli import main
        from rmrouter.data.behaviour import read_behaviour

        folder = self.work / "truncated"
        path = folder / "checkpoints" / "behaviour" / "default.jsonl"
        write_behaviour(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
        read = first_line(lambda: read_behaviour(path))
        args = ["fit", "--config", str(ROOT / "configs/offline_router.yaml"), "--model.init_args.encoder",
                self.encoder, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
        with in_folder(folder):
            fitted = first_line(lambda: main(args))
        small = folder / "small.jsonl"
        collect_behaviour(make_pool(), [ListSource(PAIRS)], small, table=None, batch_size=2)
        whole = small.read_bytes()
        small.write_bytes(whole[: int(len(whole) * 0.6)])
        collect_behaviour(make_pool(), [ListSource(PAIRS)], small, table=None, batch_size=2)
        same = small.read_bytes() == whole
        happened = (
            f"`read_behaviour`: {read}. Offline router fit on it: {fitted}. Collecting into a file cut the "
            f"same way: {'repaired, identical to an uninterrupted one' if same else 'not repaired'}"
        )
        self.record("behaviour file cut mid-line", "the file cut at 60 % of its bytes (in a line)",
                    "readers name the file, line and the fix; collection repairs it", happened,
                    same and "unfinished" in read and "unfinished" in fitted)  # fmt: skip

    def bad_configs(self) -> None:
        import lightning.pytorch as pl

        from rmrouter.cli import main

        class Stopped(Exception):
            """Raised instead of training: the config was accepted."""

        def stop(*args, **kwargs):
            raise Stopped("accepted: instantiated everything and reached `Trainer.fit` (stopped there)")

        folder = self.work / "configs"
        write_default_pool_prior(folder / "checkpoints" / "offline_router" / "prior.pt", self.prior)
        fit, pl.Trainer.fit = pl.Trainer.fit, stop
        try:
            for extra in BAD_VALUES:
                with in_folder(folder):
                    started = time.perf_counter()
                    outcome = first_line(lambda extra=extra: main(["fit", *LIVE, *extra]))
                    seconds = time.perf_counter() - started
                value = " ".join(extra) or "(none: the control)"
                happened = f"{outcome} ({seconds:.0f} s)"
                key = extra[0].rsplit(".", 1)[-1] if extra else None
                ok = key in outcome and "config error" in outcome if key else "config error" not in outcome
                self.record(f"bad config: {value}", "`rmrouter.cli.main(['fit', live.yaml, bayesian.yaml, ...])` in "
                            "a folder with a toy prior of the default pool and no RM checkpoints",
                            f"a config error naming `{key}`, before anything loads" if key else "past the config "
                            "checks (then stopped by a missing RM checkpoint, or at `Trainer.fit`)", happened,
                            ok)  # fmt: skip
        finally:
            pl.Trainer.fit = fit

    def shell_mistakes(self) -> None:
        import json
        import subprocess

        folder = self.work / "mistakes"
        folder.mkdir()
        empty, infinite, twice, typo = (folder / name for name in ("empty.jsonl", "inf.jsonl", "twice.jsonl", "t.yaml"))
        empty.write_text("")
        write_behaviour(twice, rows=4)
        lines = twice.read_text().splitlines(keepends=True)
        row = json.loads(lines[0])
        row["scores"][next(iter(row["scores"]))] = [float("inf"), 0.0]
        infinite.write_text(json.dumps(row) + "\n")
        twice.write_text("".join([*lines, lines[0]]))
        typo.write_text("model:\n  init_args:\n    learnng_rate: 0.1\n")
        offline, live = ["fit", "--config", "configs/offline_router.yaml"], ["fit", *LIVE]
        reversed_names = (
            "[minilm-bt-math, minilm-bt-chat, minilm-bt-safety, minilm-reference, smollm2-likelihood, length]"
        )
        cases = [
            ("an empty behaviour file", ["table", "--behaviour", str(empty), "--output", str(folder / "t.md")], 1),
            ("a score of Infinity", ["table", "--behaviour", str(infinite), "--output", str(folder / "t.md")], 1),
            ("one pair twice", ["table", "--behaviour", str(twice), "--output", str(folder / "t.md")], 1),
            ("a negative learning rate", [*offline, "--model.init_args.learning_rate=-0.001"], 2),
            ("a negative optimizer lr", [*live, "--model.init_args.optimizer.init_args.lr=-1e-4"], 2),
            ("a typo in a YAML key", [*offline, "--config", str(typo)], 2),
            ("RM lists in two orders", [*offline, f"--data.init_args.rm_names={reversed_names}"], 2),
            (
                "a model name that does not exist",
                [*offline, "--model.init_args.encoder", "no-such-model-xyz", "--trainer.default_root_dir", str(folder)],
                1,
            ),  # fmt: skip
        ]
        env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # no hub answers there, as on this machine
        for what, args, code in cases:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, text=True,
                                  capture_output=True, timeout=300)  # fmt: skip
            seconds = time.perf_counter() - started
            printed = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("Seed set")]
            traceback = "Traceback" in done.stderr
            happened = (f"exit {done.returncode}, {len(printed)} line(s){', a traceback' if traceback else ''}, "
                        f"{seconds:.0f} s: {printed[-1] if printed else '(nothing)'}")  # fmt: skip
            ok = done.returncode == code and not traceback and 1 <= len(printed) <= 2 and seconds < 60
            self.record(f"mistake: {what}", f"`python cli.py {' '.join(args[:3])} ...`",
                        f"exit {code}, one line (two for a parse error) naming what to fix, no traceback, seconds",
                        happened, ok)  # fmt: skip


def write_default_pool_prior(path: Path, toy_prior: Path) -> None:
    """The toy prior's encoder and MLP with one random BT direction per RM of the default pool, so a config of the
    default pool passes the prior checks (its RM names, and the `reward_scale` of `prior_scale: calibrated`)."""
    from behaviour_helpers import RM_NAMES

    from rmrouter.routers.prior import RouterPrior

    toy = RouterPrior.load(toy_prior)
    directions = torch.nn.functional.normalize(torch.randn(len(RM_NAMES), toy.bt_embeddings.shape[1]), dim=1)
    fields = dict(encoder=toy.encoder, pooling=toy.pooling, max_length=toy.max_length, mlp_config=toy.mlp_config,
                  mlp_state=toy.mlp_state, metadata={"reward_scale": 1.0})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    RouterPrior(list(RM_NAMES), directions, **fields).save(path)


def first_line(call: Callable[[], object]) -> str:
    """What `call` ends with, in one line: its exception's first line (a `SystemExit`'s message or the last error line
    it printed), or `returned` when nothing went wrong."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            call()
    except SystemExit as error:
        message = str(error.code) if error.code not in (None, 0, 1, 2) else ""
        lines = [line for line in printed.getvalue().splitlines() if "error" in line.lower()] or [""]
        text = message or lines[-1] or f"exit status {error.code}"
        return f"`SystemExit`: {text.splitlines()[0]}"
    except Exception as error:  # noqa: BLE001 (what comes out is the result)
        lines = str(error).splitlines() or [""]
        # jsonargparse wraps an error of instantiating a union-typed value (the module, its pool) in one whose first
        # line says only that; the first error it lists is named too
        inner = [line.strip()[2:] for line in lines if line.strip().startswith("- ")]
        inner = [line for line in inner if not line.startswith(("Does not validate", "Expected a"))]
        return f"`{type(error).__name__}`: {lines[0]}" + (f" (the error inside: {inner[0]})" if inner else "")
    return "returned"


@contextlib.contextmanager
def in_folder(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    back, argv = Path.cwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["cli.py"]
    try:
        yield
    finally:
        os.chdir(back)
        sys.argv = argv


@contextlib.contextmanager
def one_thread():
    """As the killed processes run (`OMP_NUM_THREADS=1`): another thread count may change a sum's last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def table(rows: list[tuple[str, str, str, str, bool]]) -> str:
    lines = ["| trial | what was done | should | what happened | as it should |", "|---|---|---|---|:---:|"]
    for trial, done, expected, happened, ok in rows:
        cells = [cell.replace("|", "\\|").replace("\n", " ") for cell in (trial, done, expected, happened)]
        lines.append(f"| {' | '.join(cells)} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines)


NOTES = """
What each trial does is in the docstring of `benchmarks/reliability.py`; the killed runs are `tests/kill_runs.py` on
the tests' tiny models, and `tests/test_kill_safe.py` asserts the same outcomes. Checkpoints are written by
`rmrouter.callbacks.AtomicCheckpointIO` (a temporary file next to the target, fsynced, `os.replace`d), which the
project's `ResumableCheckpoint` installs; a kill leaves at most a hidden `.last.ckpt.*.partial`, removed by the next
save.
Behaviour collection appends each scored batch with one write, flushed and fsynced; a line a kill left unfinished is
cut off (one `truncate`) by the next collection, which scores those pairs again. The online module seeds torch's
global RNG, which sampling and dropout draw from and no checkpoint holds, from (seed, step, rank) right before each of
a step's draws, so a resumed run samples what an uninterrupted one does."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="markdown report to write (e.g. docs/reliability.md)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rmrouter-reliability-"))
    os.environ["RMROUTER_EMBEDDING_CACHE"] = str(work / "embedding_cache")  # the user's cache is left alone
    try:
        trials = Trials(work)
        for trial in (trials.online_kill_and_resume, trials.online_kill_while_writing, trials.lightning_staging,
                      trials.offline_kill_and_resume, trials.collection, trials.truncated_behaviour,
                      trials.bad_configs, trials.shell_mistakes, trials.moved_run_prior,
                      trials.later_run_and_export):  # fmt: skip
            trial()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    notes = NOTES + f"\n\nAll trials took {time.perf_counter() - started:.0f} s."
    report = table(trials.rows)
    print(report)
    if args.output is not None:
        write_report(args.output, "Reliability: kills, torn files and bad configs", notes, report)


if __name__ == "__main__":
    main()
