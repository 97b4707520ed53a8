"""Helpers shared by the tests that compare shipped configs key by key."""

from __future__ import annotations

from typing import Any


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config as `dotted.key -> value`; a list of dicts (callbacks) is keyed by position."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}
