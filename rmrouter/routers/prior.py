"""The offline router's artifact, consumed by the online router: per-RM Bradley-Terry embeddings and a pair encoder.

Online, `bt_embeddings[n]` is the prior mean of RM `rm_names[n]`, and the pair encoder (a text encoder named for the
model store plus a small MLP rebuilt from `mlp_config` and `mlp_state`) embeds each new pair next to them.

One file, written with `torch.save` of plain dicts, lists, tensors and primitives only, so it loads with
`torch.load(weights_only=True)`: reading a prior can never run code. Writes are atomic (temp file, then rename), so a
crash mid-save leaves the previous prior, not half a file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

FORMAT_VERSION = 2  # 2 added bt_scale
KIND = "rmrouter.RouterPrior"
# Rows are L2-normalised by the BT head; float32 round-off stays far inside this.
NORM_TOLERANCE = 1e-3
PAYLOAD_FIELDS = (
    "rm_names",
    "bt_embeddings",
    "bt_scale",
    "encoder",
    "pooling",
    "max_length",
    "mlp_config",
    "mlp_state",
    "metadata",
)


class RouterPriorError(ValueError):
    """A router prior (file or object) cannot be used as it is; the message says where, what, and what to do."""


@dataclass(frozen=True, eq=False, kw_only=True)
class PriorFile:
    """What every prior artifact shares (`RouterPrior`, `rmrouter.routers.task_prior.TaskPrior`): the pair encoder's
    fields and the metadata (keyword-only), checks of its version, names and pair-encoder fields, the pool check, one
    atomic `save` of its `to_payload()` and one checked `load`. A subclass is a frozen dataclass that adds its
    `rm_names`, its own tensors, `version` (defaulting to its format version) and `source`, and names its `KIND`,
    `FORMAT_VERSION`, `PAYLOAD_FIELDS` and `WHAT` (its name in messages).

    Args:
        encoder: Name of the pair encoder's text encoder in the model store.
        pooling: Its pooling (`mean` or `last_token`).
        max_length: Its token limit per text.
        mlp_config: Everything the pair encoder needs to rebuild its MLP (sizes, activation, flags); primitives only.
        mlp_state: The MLP's `state_dict`.
        metadata: Provenance and scores (behaviour file, training steps, router accuracy, ...); primitives only.
    """

    encoder: str
    pooling: str
    max_length: int
    mlp_config: dict[str, Any]
    mlp_state: dict[str, Tensor]
    metadata: dict[str, str | float | int] = field(default_factory=dict)

    KIND: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]]
    WHAT: ClassVar[str]

    def _check_version_and_names(self, *fields: str) -> None:
        """The format version, then each of `fields` made a list of distinct non-empty names."""
        if self.version != self.FORMAT_VERSION:
            raise RouterPriorError(f"format version {self.version} given, this rmrouter writes {self.FORMAT_VERSION}")
        for name in fields:
            values = list(getattr(self, name))
            object.__setattr__(self, name, values)
            if not values or len(set(values)) != len(values) or not all(isinstance(v, str) and v for v in values):
                raise RouterPriorError(f"{name} must be distinct non-empty names, got {values}")

    def _check_pair_encoder(self) -> None:
        """The pair encoder's fields and the metadata: what the online router rebuilds `h` from."""
        if not isinstance(self.encoder, str) or not self.encoder or not isinstance(self.pooling, str):
            raise RouterPriorError(f"encoder and pooling must be names, got {self.encoder!r}, {self.pooling!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise RouterPriorError(f"max_length must be a positive int, got {self.max_length!r}")
        _check_primitives(self.mlp_config, "mlp_config")
        _check_primitives(self.metadata, "metadata")
        if not isinstance(self.mlp_state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in self.mlp_state.items()
        ):
            raise RouterPriorError(f"mlp_state must map parameter names to tensors, got {_describe(self.mlp_state)}")

    def check_pool(self, rm_names: Sequence[str]) -> None:
        """Refuses a pool whose RMs differ from the prior's, in names or in order (its rows are per position)."""
        check_pool(self.rm_names, rm_names, self.WHAT, self.source)

    def to_payload(self) -> dict[str, Any]:
        """The prior as plain dicts, lists, tensors and primitives (what `save` writes)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Writes the prior to `path` atomically: a failed write leaves whatever was there before."""
        return save_payload(self.to_payload(), path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Reads a prior written by `save`, refusing other files, unknown format versions and inconsistent shapes."""
        path = Path(path)
        payload = read_payload(path, cls.KIND, cls.FORMAT_VERSION, cls.PAYLOAD_FIELDS, cls.WHAT)
        try:
            return cls(
                **{name: payload[name] for name in cls.PAYLOAD_FIELDS}, version=payload["version"], source=str(path)
            )
        except RouterPriorError as error:
            raise RouterPriorError(f"{path}: {error}") from None


@dataclass(frozen=True, eq=False)
class RouterPrior(PriorFile):
    """What the offline router learned, in the form the online router needs it.

    Args:
        rm_names: The pool's RM names, in the order of the rows of `bt_embeddings`.
        bt_embeddings: `[N, d]` Bradley-Terry embedding per RM, rows L2-normalised as the BT head used them.
        bt_scale: The offline BT head's learned logit scale: it trained on `bt_scale * <h, E_bt[n]>`, so score gaps
            times this scale are its log-odds that one RM is right where another is wrong. 1 is the plain cosine.
        version: Format version; always `FORMAT_VERSION` for a prior in memory.
        source: Where the prior was loaded from, for error messages; set by `load`, never saved.
        encoder, pooling, max_length, mlp_config, mlp_state, metadata: the pair encoder and provenance (`PriorFile`).
    """

    rm_names: list[str]
    bt_embeddings: Tensor
    bt_scale: float = 1.0
    version: int = FORMAT_VERSION
    source: str | None = None

    KIND: ClassVar[str] = KIND
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    PAYLOAD_FIELDS: ClassVar[tuple[str, ...]] = PAYLOAD_FIELDS
    WHAT: ClassVar[str] = "router prior"

    def __post_init__(self) -> None:
        self._check_version_and_names("rm_names")
        names = self.rm_names
        embeddings = self.bt_embeddings
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise RouterPriorError(f"bt_embeddings must be a float tensor [N, d], got {_describe(embeddings)}")
        if embeddings.shape[0] != len(names):
            raise RouterPriorError(
                f"bt_embeddings has {embeddings.shape[0]} rows (shape {list(embeddings.shape)}) but there are "
                f"{len(names)} RMs {names}: one row per RM, in rm_names order"
            )
        norms = embeddings.detach().float().norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=NORM_TOLERANCE):
            raise RouterPriorError(
                f"bt_embeddings rows must be L2-normalised as the BT head used them, got norms {norms.tolist()}: "
                "save torch.nn.functional.normalize(E_bt, dim=-1)"
            )
        if isinstance(self.bt_scale, bool) or not isinstance(self.bt_scale, int | float) or not self.bt_scale > 0:
            raise RouterPriorError(f"bt_scale must be a positive number, got {self.bt_scale!r}")
        self._check_pair_encoder()

    @property
    def dim(self) -> int:
        """The pair embedding size `d`."""
        return self.bt_embeddings.shape[1]

    def to_payload(self) -> dict[str, Any]:
        """The prior as plain dicts, lists, tensors and primitives (what `save` writes)."""
        return {
            "kind": KIND,
            "version": self.version,
            "rm_names": list(self.rm_names),
            # Clones drop views into larger storages (torch.save would write those whole) and any autograd graph.
            "bt_embeddings": self.bt_embeddings.detach().cpu().clone(),
            "bt_scale": float(self.bt_scale),
            "encoder": self.encoder,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "mlp_config": self.mlp_config,
            "mlp_state": {name: tensor.detach().cpu().clone() for name, tensor in self.mlp_state.items()},
            "metadata": dict(self.metadata),
        }


def check_pool(prior_names: Sequence[str], rm_names: Sequence[str], what: str, source: str | None) -> None:
    """Refuses a pool whose RMs differ from a prior's, in names or in order (a prior's rows are per position)."""
    pool = list(rm_names)
    if pool == list(prior_names):
        return
    if sorted(pool) == sorted(prior_names):
        fix = "same RMs in another order: list the pool's RMs in the prior's order"
    else:
        missing = [name for name in prior_names if name not in pool]
        extra = [name for name in pool if name not in prior_names]
        fix = f"the pool lacks {missing} and has no prior for {extra}: train a prior on this pool's behaviour"
    where = f" {source}" if source else ""
    raise RouterPriorError(
        f"{what}{where} was trained for RMs {list(prior_names)} (in this order), but the pool is {pool}: {fix}"
    )


def save_payload(payload: dict[str, Any], path: str | Path) -> Path:
    """Writes a prior's payload to `path` atomically (temp file, fsync, rename): a failed write leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes the file private; a prior is an ordinary shareable artifact
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_payload(path: Path, kind: str, version: int, fields: Sequence[str], what: str) -> dict[str, Any]:
    """A payload `save_payload` wrote, checked to be of `kind` at `version` with every field; never runs code."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} here (train the offline router to write one)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise RouterPriorError(f"{path}: not a {what} file ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) and "kind" in payload else None
        keys = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        described = f"kind {found!r}" if found else keys
        raise RouterPriorError(f"{path}: not a {what} file (expected kind {kind!r}, found {described})")
    given = payload.get("version")
    if given != version:
        newer = isinstance(given, int) and given > version
        older = isinstance(given, int) and 0 < given < version
        fix = (
            "written by a newer rmrouter: upgrade rmrouter"
            if newer
            else "written by an older rmrouter: train the offline router again"
            if older
            else "an unknown version"
        )
        raise RouterPriorError(
            f"{path}: {what} format version {given!r}, this rmrouter reads version {version} ({fix})"
        )
    missing = [name for name in fields if name not in payload]
    if missing:
        raise RouterPriorError(f"{path}: {what} lacks {missing}; the file is damaged, write it again")
    return payload


def _check_primitives(value: Any, where: str) -> None:
    """Refuses anything `torch.load(weights_only=True)` could not read back."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_primitives(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RouterPriorError(f"{where} has key {key!r}; keys must be strings")
            _check_primitives(item, f"{where}.{key}")
        return
    raise RouterPriorError(f"{where} is a {type(value).__name__}; only str, int, float, bool, None, lists and dicts")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)} and dtype {value.dtype}"
    return type(value).__name__
