"""Checkpoints that hold only the weights training changes.

The frozen rest of an online DPO module (a LoRA adapter's base, the full-finetune reference copy) is rebuilt from the
policy's name by `configure_model`, so it need not be saved: a LoRA checkpoint then holds megabytes, not the whole
model, and is quick to write. Loading such a checkpoint cannot be strict, so a missing trained weight is caught here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

# Segments the FSDP and activation-checkpoint wrappers add to parameter names, which a full state dict leaves out.
_WRAPPER_SEGMENTS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")


def trainable_names(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> set[str]:
    """The state-dict names of the parameters that require grad, as a full state dict spells them.

    Under FSDP with activation checkpointing the live names carry the wrappers' segments, which the full state dict in
    the checkpoint leaves out (as torch's `clean_tensor_name` does), so they are removed to match it.

    Args:
        named_parameters: The module's `named_parameters()`.
    """
    names = {name for name, parameter in named_parameters if parameter.requires_grad}
    return {_WRAPPER_SEGMENTS.sub("", name) for name in names}


def keep_trainable_weights(checkpoint: dict[str, Any], trainable: set[str]) -> None:
    """Drops every state-dict entry of `checkpoint` (in place) but the `trainable` ones."""
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def check_trainable_weights(checkpoint: dict[str, Any], trainable: set[str]) -> None:
    """Checks that `checkpoint` holds every `trainable` weight, since non-strict loading would skip a missing one.

    Raises:
        KeyError: A trained weight is missing: the checkpoint was written for another `policy` or `lora` setting.
    """
    missing = sorted(trainable - set(checkpoint["state_dict"]))
    if missing:
        raise KeyError(
            f"the checkpoint lacks {len(missing)} trained weights of this policy (e.g. {missing[:3]}): it was "
            "written for another `policy` or `lora` setting"
        )
