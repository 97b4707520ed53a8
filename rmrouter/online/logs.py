"""What one online DPO step logs (`train/*`), apart from its pair counts and the router's metrics.

Each function takes the module's `log(name, value)`, which logs the value for this step and keeps it for the step's
`step_values` output (callbacks such as the closing summary read it), so these are plain functions of the step's
results. The values of `PROGRESS_BAR` are also shown on the progress bar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor

from rmrouter.dpo import DPOOutput, implicit_kl
from rmrouter.online.pairs import Candidates
from rmrouter.policy.generation import Completion
from rmrouter.routers.base import PairJudge

Log = Callable[[str, float | Tensor], None]

# The step values the progress bar shows next to the step count (the module logs them with `prog_bar=True`).
PROGRESS_BAR = frozenset({"train/dpo_loss", "train/pairs"})
SAMPLES_FILE = "samples.jsonl"  # where loggers without a text view get the sample completions, in their log_dir


def log_dpo(log: Log, out: DPOOutput, policy: Tensor, reference: Tensor, responses: list[list[int]]) -> None:
    """Logs the DPO loss, DPO's implicit reward margin and accuracy, the policy's drift and the response length.

    Args:
        log: The module's step logger.
        out: `dpo_loss` of the trained pairs.
        policy: `[2P]` log-probs of the trained pairs' responses (chosen, then rejected) under the policy.
        reference: The same responses' log-probs under the reference.
        responses: The same responses' token ids.
    """
    log("train/dpo_loss", out.losses.detach().mean())
    log("train/reward_margin", out.reward_margins.mean())
    log("train/reward_acc", out.reward_accuracies.mean())
    log("train/implicit_kl", implicit_kl(policy.detach(), reference))
    log("train/response_length", sum(len(r) for r in responses) / len(responses))


def log_labelling(log: Log, candidates: Candidates, preference: Tensor) -> tuple[list[str], Tensor]:
    """Logs how often the routed labels match the recorded ones, overall and per domain (simulated mode).

    Args:
        log: The module's step logger.
        candidates: The step's candidates, with their `truth`.
        preference: `[P]` the routed labels (+1, -1, or 0 for an abstention or tie).

    Returns:
        `(domains, correct)` per routed pair, for exact run totals (`rmrouter.callbacks.LabellingTally` takes the
        `labelling` output in on_train_batch_end): the logged means are this rank's only.
    """
    # An abstention or tie (preference 0) is not a correct label: the share is over every routed pair.
    correct = (preference == candidates.truth).float()
    log("train/labelling_acc", correct.mean())
    domains = candidates.pairs.domains
    for domain in sorted(set(domains)):
        rows = [i for i, d in enumerate(domains) if d == domain]
        log(f"train/labelling_acc/{domain}", correct[rows].mean())
    return list(domains), correct.bool()


def log_completions(log: Log, completions: Sequence[Sequence[Completion]], judge: PairJudge) -> None:
    """Logs what live sampling and judging did: the share of completions that ended with EOS (`train/eos_rate`) and
    the judge's run-long error count of every RM (`train/rm_errors/<rm>`).

    Every RM at every step, so a healthy RM shows a flat 0 rather than no curve; a judge that keeps no error counts (a
    test's stand-in) logs nothing.

    Args:
        log: The module's step logger.
        completions: Per prompt, its sampled completions.
        judge: The pool's judge, kept for the whole run (`OnlineDPOModule.live_judge`).
    """
    flat = [c for row in completions for c in row]
    log("train/eos_rate", sum(c.has_eos for c in flat) / len(flat))
    for name, count in getattr(judge, "errors", {}).items():
        log(f"train/rm_errors/{name}", float(count))


def _shown(batch: Sequence, completions: Sequence[Sequence[Completion]]) -> list[dict[str, Any]]:
    """The first two prompts of a batch with their completions, cut to 500 and 1000 characters."""
    return [
        {
            "domain": record.domain,
            "prompt": record.prompt[-1]["content"][:500],
            "completions": [{"text": c.text[:1000], "ended": c.has_eos} for c in samples],
        }
        for record, samples in list(zip(batch, completions, strict=True))[:2]
    ]


def samples_markdown(batch: Sequence, completions: Sequence[Sequence[Completion]]) -> str:
    """The first two prompts of a batch with their sampled completions, as Markdown for TensorBoard's text tab.

    Prompts and completions are cut (500 and 1000 characters) to keep the event file small; a completion cut at
    `max_new_tokens` is marked `(cut)`, since it is penalised before pairing.
    """
    lines = []
    for row in _shown(batch, completions):
        lines.append(f"**{row['domain']}** `{row['prompt']}`")
        lines += [f"- {'' if c['ended'] else '(cut) '}{c['text']}" for c in row["completions"]]
    return "\n\n".join(lines)


def log_samples(
    logger: Any, batch: Sequence, completions: Sequence[Sequence[Completion]], step: int, every: int
) -> None:
    """Writes the step's sample completions every `every` steps (0: never) where the logger keeps text.

    - TensorBoard (an `experiment.add_text`): `samples_markdown` as the text `train/samples`;
    - MLflow (an `experiment.log_text` and a `run_id`): that Markdown as the artifact `samples/step_<step>.md`;
    - Weights & Biases (a `log_text` table): a row `(step, markdown)` of the table `train/samples`;
    - any other logger with a `log_dir` (CSV): one JSON line `{"step", "samples": [{"domain", "prompt",
      "completions": [{"text", "ended"}]}]}` appended to `<log_dir>/samples.jsonl`, on the global-zero process.

    A logger with none of these (or no logger) gets nothing.

    Args:
        logger: The module's logger, or None.
        batch: The step's prompt records.
        completions: Per record, its sampled completions.
        step: The global step.
        every: The module's `log_text_every_n_steps`.
    """
    if logger is None or every <= 0 or step % every:
        return
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_text"):
        experiment.add_text("train/samples", samples_markdown(batch, completions), step)
    elif hasattr(experiment, "log_text") and getattr(logger, "run_id", None) is not None:
        experiment.log_text(logger.run_id, samples_markdown(batch, completions), f"samples/step_{step}.md")
    elif callable(getattr(logger, "log_text", None)):
        logger.log_text(
            key="train/samples", columns=["step", "samples"], data=[[step, samples_markdown(batch, completions)]]
        )
    elif getattr(logger, "log_dir", None) is not None and rank_zero_only.rank == 0:
        path = Path(logger.log_dir) / SAMPLES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"step": step, "samples": _shown(batch, completions)}) + "\n")
