"""The main job on the embedded default: every stage that exists, each skipped when its output is already there.

1. Train the learned RMs of the default pool (`fit` on each config) unless their checkpoints exist.
2. Collect behaviour records of the default pool (resumes a partial file) and write the accuracy table.
3. Train the offline router on those records unless its prior exists, then `test` it, which writes its results table.
4. Online DPO with the BayesianRouter on the offline prior (resumed from its last checkpoint after an interruption),
   unless its closing summary exists; the summary is printed and copied to `docs/online_demo.md`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)


DEFAULT_LEARNED_RMS = {
    f"configs/learned_rm/{name}.yaml": f"checkpoints/learned_rm/{name}/best.ckpt" for name in ("safety", "chat", "math")
}


def run_pipeline(
    learned_rms: dict[str, str] | None = None,
    behaviour_config: Path = Path("configs/behaviour.yaml"),
    offline_router_config: Path = Path("configs/offline_router.yaml"),
    offline_router_prior: Path = Path("checkpoints/offline_router/prior.pt"),
    offline_router_checkpoint: Path = Path("checkpoints/offline_router/best.ckpt"),
    online_config: Path = Path("configs/online/live.yaml"),
    online_router_config: Path = Path("configs/routers/bayesian.yaml"),
    online_checkpoint: Path = Path("checkpoints/online/live/last.ckpt"),
    online_summary: Path = Path("checkpoints/online/live/summary.md"),
    online_report: Path | None = Path("docs/online_demo.md"),
    readme: Path = Path("README.md"),
    behaviour_args: list[str] | None = None,
    online_args: list[str] | None = None,
) -> None:
    """Runs the pipeline's stages in order; each one is skipped or resumed when its output exists.

    Args:
        learned_rms: LightningCLI `fit` config of each learned RM the pool needs -> the checkpoint that fit leaves
            (and the pool loads); None: `DEFAULT_LEARNED_RMS`, the default pool's safety, chat and math RMs.
        behaviour_config: Config of the `collect` command.
        offline_router_config: LightningCLI config of the offline router (`fit`, then `test`).
        offline_router_prior: Where that fit leaves the prior artifact for the online stage.
        offline_router_checkpoint: The checkpoint `test` evaluates.
        online_config: LightningCLI `fit` config of the online DPO run.
        online_router_config: The router config composed with it (`configs/routers/<method>.yaml`).
        online_checkpoint: Where that run keeps its last checkpoint; when it exists the run resumes from it.
        online_summary: Where that run writes its closing summary (`OnlineSummary`); when it exists, the stage is done.
        online_report: Where the summary is copied for the docs; None copies it nowhere.
        readme: A README whose `online-demo-summary` block shows the summary too (left alone without the block).
        behaviour_args: Extra `collect` arguments, e.g. `["--max_batches", "2"]`.
        online_args: Extra `fit` arguments of the online run, e.g. `["--trainer.max_steps", "4"]`.
    """
    from rmrouter.cli import main

    started = time.perf_counter()
    for config, checkpoint in (DEFAULT_LEARNED_RMS if learned_rms is None else learned_rms).items():
        if Path(checkpoint).is_file():
            log.info("[1/4] learned RM: %s exists, not retraining", checkpoint)
        else:
            log.info("[1/4] learned RM: training with %s", config)
            main(["fit", "--config", str(config)])
            _expect(Path(checkpoint), Path(config))
    log.info("[2/4] behaviour collection with %s", behaviour_config)
    main(["collect", "--config", str(behaviour_config), *(behaviour_args or [])])
    if Path(offline_router_prior).is_file():
        log.info("[3/4] offline router: %s exists, not retraining", offline_router_prior)
    else:
        log.info("[3/4] offline router: training with %s", offline_router_config)
        main(["fit", "--config", str(offline_router_config)])
        _expect(offline_router_prior, offline_router_config)
        main(["test", "--config", str(offline_router_config), "--ckpt_path", str(offline_router_checkpoint)])
    if Path(online_summary).is_file():
        log.info("[4/4] online DPO: %s exists, not retraining\n%s", online_summary, Path(online_summary).read_text())
    else:
        resume = ["--ckpt_path", str(online_checkpoint)] if Path(online_checkpoint).is_file() else []
        log.info("[4/4] online DPO: %s with %s%s", online_config, online_router_config, " (resuming)" if resume else "")
        main(["fit", "--config", str(online_config), "--config", str(online_router_config), *resume,
              *precision_for_this_machine(), *(online_args or [])])  # fmt: skip
        _expect(online_summary, online_config)
    if online_report is not None:
        Path(online_report).parent.mkdir(parents=True, exist_ok=True)
        note = f"_Written by the main job (`bash scripts/run.sh`, stage 4) from `{online_summary}`._\n\n"
        Path(online_report).write_text(note + Path(online_summary).read_text())
        show_in_readme(Path(online_summary).read_text(), readme)
    log.info("pipeline done in %.0f s", time.perf_counter() - started)


def precision_for_this_machine() -> list[str]:
    """`--trainer.precision 32-true` where bfloat16 is emulated (AVX2-only CPUs, measured several times slower than
    float32 there), so the online config's `bf16-mixed` does not make the main job crawl; nothing elsewhere."""
    from rmrouter.reward_models._hf import native_bfloat16

    if native_bfloat16():
        return []
    log.info("[4/4] this machine has no native bfloat16: the online run uses --trainer.precision 32-true")
    return ["--trainer.precision", "32-true"]


README_START, README_END = "<!-- online-demo-summary:start -->", "<!-- online-demo-summary:end -->"


def summary_block(summary: str) -> str:
    """The summary as the README shows it: its headings one level down, between the markers."""
    body = re.sub(r"^## ", "### ", summary.strip(), flags=re.M)
    return f"{README_START}\n{body}\n{README_END}"


def readme_block(readme: str) -> str | None:
    """The README's summary block, markers included; None when it has none."""
    match = re.search(re.escape(README_START) + r".*?" + re.escape(README_END), readme, flags=re.S)
    return match.group(0) if match else None


def show_in_readme(summary: str, readme: Path) -> None:
    """Puts `summary` in the README's block, so the README always shows the last run's summary, not a stale one."""
    text = Path(readme).read_text() if Path(readme).is_file() else ""
    block = readme_block(text)
    if block is not None:
        Path(readme).write_text(text.replace(block, summary_block(summary)))


def _expect(output: Path, config: Path) -> None:
    if not Path(output).is_file():
        raise FileNotFoundError(f"fit with {config} did not write {output}: check the paths in that config")
