"""Helpers shared by the `test_data_*` files: writing small JSON-lines files and checking how a bad row is reported."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rmrouter.data import DataError, Source


def write_lines(path: Path, rows: list[dict | str]) -> str:
    """Writes one JSON object (or a raw, possibly malformed, line) per row; returns the path as text."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def sha(*parts: str) -> str:
    """The id hash the loaders promise, computed independently of `rmrouter.data.common.stable_hash`."""
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12]


def assert_bad_row(
    make: Callable[..., Source], path: str, line: int, expected: str, good: int, caplog: pytest.LogCaptureFixture
) -> None:
    """`on_error="raise"` names file, line and what was wrong; `skip` keeps the `good` records and logs one count."""
    with pytest.raises(DataError) as error:
        make(on_error="raise").load()
    assert f"{path}:{line}: " in str(error.value)
    assert expected in str(error.value)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rmrouter.data.jsonl"):
        records = make(on_error="skip").load()
    assert len(records) == good
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path}: skipped 1 of" in warnings[0] and expected in warnings[0]


def sources_of(config: Path, keys: list[str], prompts: bool = False) -> list:
    """The data sources a shipped config builds, from its raw YAML (no model is loaded)."""
    import yaml
    from jsonargparse import ArgumentParser

    from rmrouter.data.sources import PreferenceSource, PromptSource

    raw = yaml.safe_load(config.read_text())
    for key in keys:
        raw = raw[key]
    parser = ArgumentParser()
    parser.add_argument("--sources", type=list[PromptSource if prompts else PreferenceSource])
    return parser.instantiate_classes(parser.parse_object({"sources": raw})).sources
