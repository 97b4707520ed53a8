"""The main job on the embedded default: every stage that exists, each skipped when its output is already there.

1. Train the learned RMs of the default pool (`fit` on each config) unless their checkpoints exist.
2. Collect behaviour records of the default pool (resumes a partial file) and write the accuracy table.
3. Train the offline router on those records unless its prior exists, then `test` it, which writes its results table.
4. Online DPO with the BayesianRouter on the offline prior (resumed from its last checkpoint after an interruption),
   unless its closing summary exists; the summary is printed.

Everything it writes lies under `checkpoints/` (the shipped configs' paths): a run leaves `git status` clean.
`python cli.py publish --config configs/publish.yaml` copies its tables and summary into `docs/` and the README.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from rmrouter.commands import run_lightning
from rmrouter.machine import describe_machine
from rmrouter.models.embedding_store import embedding_cache_dir
from rmrouter.models.store import cache_dir

log = logging.getLogger(__name__)


def run_output(config: Path, callback: str) -> Path:
    """The file the trainer callback named `callback` (its class name) writes in a LightningCLI config's runs: its
    `path` when the config gives one, else its default file in the run's folder (`trainer.default_root_dir`, see
    `rmrouter.callbacks.run_folder`). Read from the config itself, so the pipeline never restates where stages write."""
    from rmrouter import callbacks

    trainer = yaml.safe_load(Path(config).read_text()).get("trainer") or {}
    for entry in trainer.get("callbacks") or []:
        class_path = entry.get("class_path", "") if isinstance(entry, dict) else str(entry)
        if class_path.rpartition(".")[2] == callback:
            path = ((entry.get("init_args") or {}) if isinstance(entry, dict) else {}).get("path")
            return Path(path) if path is not None else run_folder(config) / getattr(callbacks, callback).FILE_NAME
    raise ValueError(f"{config}: no trainer callback {callback}; the pipeline reads its output from it")


def run_folder(config: Path) -> Path:
    """A LightningCLI config's run folder, `trainer.default_root_dir`."""
    trainer = yaml.safe_load(Path(config).read_text()).get("trainer") or {}
    if not trainer.get("default_root_dir"):
        raise ValueError(f"{config}: no trainer.default_root_dir; the pipeline reads where the run writes from it")
    return Path(trainer["default_root_dir"])


def checkpoint_of(config: Path, name: str) -> Path:
    """The checkpoint `name` (`best` or `last`) that fitting `config` leaves, in its ResumableCheckpoint's folder (the
    run's folder unless it names a `dirpath`)."""
    trainer = yaml.safe_load(Path(config).read_text()).get("trainer") or {}
    for entry in trainer.get("callbacks") or []:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("ResumableCheckpoint"):
            dirpath = (entry.get("init_args") or {}).get("dirpath")
            return (Path(dirpath) if dirpath else run_folder(config)) / f"{name}.ckpt"
    raise ValueError(f"{config}: no trainer callback ResumableCheckpoint; the pipeline reads its checkpoints from it")


def run_pipeline(
    learned_rms: list[Path],
    behaviour_config: Path,
    offline_router_config: Path,
    online_config: Path,
    online_router_config: Path,
    behaviour_args: list[str] | None = None,
    online_args: list[str] | None = None,
    times: Path = Path("checkpoints/pipeline_times.md"),
) -> None:
    """Runs the pipeline's stages in order; each one is skipped or resumed when its output exists.

    Where each stage writes is read from the config that writes it (its ResumableCheckpoint's folder, the offline
    router's `RouterPriorWriter` path, the online run's `OnlineSummary` path), so each path is written once, in that
    config.

    Args:
        learned_rms: LightningCLI `fit` config of each learned RM the pool needs; its `best.ckpt` is what the pool
            loads.
        behaviour_config: Config of the `collect` command.
        offline_router_config: LightningCLI config of the offline router (`fit`, then `test` of its `best.ckpt`); its
            prior is what the online router reads.
        online_config: LightningCLI `fit` config of the online DPO run; its `last.ckpt` resumes an interrupted run and
            its closing summary marks the stage done.
        online_router_config: The router config composed with it (`configs/routers/<method>.yaml`).
        behaviour_args: Extra `collect` arguments, e.g. `["--max_batches", "2"]`.
        online_args: Extra `fit` arguments of the online run, e.g. `["--trainer.max_steps", "4"]`.
        times: Where each stage's wall-clock seconds are written, as a markdown table (also logged at the end).
    """
    from rmrouter.behaviour.collect import run_collect

    caches = cache_state()
    clock = StageClock()
    for config in learned_rms:
        checkpoint = checkpoint_of(config, "best")
        with clock.stage(f"1. learned RM ({Path(config).stem})") as stage:
            if checkpoint.is_file():
                log.info("[1/4] learned RM: %s exists, not retraining", checkpoint)
                stage.skipped = True
            else:
                log.info("[1/4] learned RM: training with %s", config)
                run_lightning(["fit", "--config", str(config)])
                _expect(checkpoint, Path(config))
    with clock.stage("2. behaviour collection"):
        log.info("[2/4] behaviour collection with %s", behaviour_config)
        run_collect(["--config", str(behaviour_config), *(behaviour_args or [])])
    offline_router_prior = run_output(offline_router_config, "RouterPriorWriter")
    with clock.stage("3. offline router (fit + test)") as stage:
        if offline_router_prior.is_file():
            log.info("[3/4] offline router: %s exists, not retraining", offline_router_prior)
            stage.skipped = True
        else:
            log.info("[3/4] offline router: training with %s", offline_router_config)
            run_lightning(["fit", "--config", str(offline_router_config)])
            _expect(offline_router_prior, offline_router_config)
            checkpoint = str(checkpoint_of(offline_router_config, "best"))
            run_lightning(["test", "--config", str(offline_router_config), "--ckpt_path", checkpoint])
    online_summary = run_output(online_config, "OnlineSummary")
    online_checkpoint = checkpoint_of(online_config, "last")
    with clock.stage("4. online DPO") as stage:
        if online_summary.is_file():
            log.info("[4/4] online DPO: %s exists, not retraining\n%s", online_summary, online_summary.read_text())
            stage.skipped = True
        else:
            resume = ["--ckpt_path", str(online_checkpoint)] if online_checkpoint.is_file() else []
            how = " (resuming)" if resume else ""
            log.info("[4/4] online DPO: %s with %s%s", online_config, online_router_config, how)
            run_lightning(["fit", "--config", str(online_config), "--config", str(online_router_config), *resume,
                  *precision_for_this_machine(), *(online_args or [])])  # fmt: skip
            _expect(online_summary, online_config)
    table = clock.table()
    Path(times).parent.mkdir(parents=True, exist_ok=True)
    Path(times).write_text(f"## Main job: time per stage\n\nOn {describe_machine()}; {caches}.\n\n{table}\n")
    log.info(
        "pipeline done in %.0f s (stage times in %s); `python cli.py publish --config configs/publish.yaml` copies "
        "its tables and summary into docs/\n%s",
        clock.total(),
        times,
        table,
    )


def cache_state() -> str:
    """Whether the caches outside `checkpoints/` held anything when the run started (a newcomer's first run finds
    both empty): SmolLM2 converted from its package, and the frozen encoders' text embeddings."""

    def state(folder: Path) -> str:
        return "warm" if folder.is_dir() and any(folder.iterdir()) else "cold"

    models, embeddings = cache_dir() / "models", embedding_cache_dir()
    return (
        f"converted models ({models}) {state(models)}, text embeddings ({embeddings}) {state(embeddings)} at the start"
    )


class StageClock:
    """Wall-clock seconds of each stage of a run, and whether it was skipped (its output already there)."""

    class Stage:
        def __init__(self, name: str) -> None:
            self.name, self.seconds, self.skipped = name, 0.0, False

    def __init__(self) -> None:
        self.stages: list[StageClock.Stage] = []

    @contextmanager
    def stage(self, name: str):
        stage = StageClock.Stage(name)
        start = time.perf_counter()
        try:
            yield stage
        finally:
            stage.seconds = time.perf_counter() - start
            self.stages.append(stage)

    def total(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    def table(self) -> str:
        lines = ["| stage | seconds | note |", "|---|---:|---|"]
        lines += [f"| {s.name} | {s.seconds:.0f} | {'skipped: its output existed' if s.skipped else ''} |"
                  for s in self.stages]  # fmt: skip
        lines.append(f"| total | {self.total():.0f} | {self.total() / 60:.1f} min |")
        return "\n".join(lines)


def precision_for_this_machine() -> list[str]:
    """`--trainer.precision 32-true` where bfloat16 is emulated (AVX2-only CPUs, measured several times slower than
    float32 there), so the online config's `bf16-mixed` does not make the main job crawl; nothing elsewhere."""
    from rmrouter.reward_models._hf import native_bfloat16

    if native_bfloat16():
        return []
    log.info("[4/4] this machine has no native bfloat16: the online run uses --trainer.precision 32-true")
    return ["--trainer.precision", "32-true"]


def _expect(output: Path, config: Path) -> None:
    if not Path(output).is_file():
        raise FileNotFoundError(f"fit with {config} did not write {output}: check the paths in that config")
