"""One way to pad token rows into a batch, for every model call of the project (policy, reward models, prefix cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"]) -> tuple[Tensor, Tensor]:
    """`(input_ids, attention_mask)` of token rows padded to the longest, long tensors `[len(rows), width]`.

    Right padding keeps every real token at the position it has alone (causal attention never looks ahead, so no
    position ids are needed); left padding ends every row at the last column, where a decoder continues from.
    """
    ids = [torch.tensor(list(row), dtype=torch.long) for row in rows]
    mask = [torch.ones(len(row), dtype=torch.long) for row in rows]
    return (
        pad_sequence(ids, batch_first=True, padding_value=pad_id, padding_side=side),
        pad_sequence(mask, batch_first=True, padding_value=0, padding_side=side),
    )
