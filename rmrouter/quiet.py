"""Third-party noise that every command would print and that says nothing about the run, filtered in one place.

Each warning is matched by its message AND the module it is attributed to (`warnings.filterwarnings(..., module=)`),
so the same text raised by other code, and every unrelated warning, still shows. Lightning's advertisement tips are log
records, dropped by a filter on the one logger that emits them. Remove an entry once its package has fixed the cause.

`quiet_third_party()` runs first in the CLI's `main` (every `python cli.py ...`, the main job included, and every rank a
multi-process launcher starts from the command line) and in `rmrouter.commands.prepare_process` for commands run from
Python.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, matched from the start; module regex; category; where it comes from)
WARNINGS: tuple[tuple[str, str, type[Warning], str], ...] = (
    (
        r"'set_vital' is deprecated",
        r"torchdata\.stateful_dataloader\.",
        UserWarning,
        "torchdata 0.11's StatefulDataLoader calls torch.set_vital, which torch deprecated",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
        FutureWarning,
        "Lightning 2.6 builds torch's deprecated LeafSpec when it flattens a step's outputs",
    ),
    (
        r"`is_gradient_checkpointing` is deprecated",
        r"transformers\.modeling_utils",
        FutureWarning,
        "peft asks transformers 5 for the renamed attribute (is_activation_checkpointing) when it wraps a model",
    ),
)

# Lightning's tips to install its cloud services (litlogger, litmodels), logged at INFO on every fit by
# `rank_zero_info`, whose logger is lightning.pytorch's once that is imported (fabric's before).
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
TIP_PREFIXES = ("💡 Tip: For seamless cloud",)


class _DropTips(logging.Filter):
    """Drops Lightning's cloud-service tips; every other record of the logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIXES)


_TIP_FILTER = _DropTips()


def quiet_third_party() -> None:
    """Filters the warnings of `WARNINGS` and Lightning's cloud tips, for the rest of the process; idempotent."""
    for message, module, category, _ in WARNINGS:
        # filterwarnings first removes an identical filter, so calling again adds nothing
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
