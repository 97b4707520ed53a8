"""`rmrouter.quiet`: the known third-party warnings and Lightning's cloud tips are filtered, nothing else is."""

from __future__ import annotations

import logging
import warnings

import pytest

from rmrouter.quiet import TIP_LOGGERS, WARNINGS, quiet_third_party


@pytest.fixture
def caught():
    """Every warning raised inside, after `quiet_third_party` (pytest restores the filters after each test)."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        quiet_third_party()
        quiet_third_party()  # idempotent
        yield records


def test_the_real_warnings_are_filtered_where_their_packages_raise_them(caught, tiny_causal_lm_dir):
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from torchdata.stateful_dataloader import StatefulDataLoader
    from transformers import AutoModelForCausalLM

    list(StatefulDataLoader([1, 2, 3], batch_size=2))  # torchdata calls the deprecated torch.set_vital
    _tree_flatten({"loss": 1.0})  # Lightning builds the deprecated LeafSpec
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    caught.clear()
    assert not model.is_gradient_checkpointing  # the deprecated name peft asks for
    warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["an unrelated warning"]


@pytest.mark.parametrize(("message", "module", "category", "why"), WARNINGS)
def test_each_filter_needs_its_message_and_its_module(caught, message, module, category, why):
    text = message.replace("\\", "")  # the regex's own text
    origin = module.replace("\\", "").rstrip(".") + ".inner"
    warnings.warn_explicit(text, category, "x.py", 1, module=origin)
    assert not caught
    warnings.warn_explicit(text, category, "x.py", 1, module="someone.else")  # the same words from elsewhere
    warnings.warn_explicit("another message", category, "x.py", 1, module=origin)  # another warning of the module
    assert [(str(w.message), w.category) for w in caught] == [(text, category), ("another message", category)]


def test_lightnings_cloud_tips_are_dropped_and_its_other_messages_kept(caught):
    from lightning.pytorch import Trainer

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in TIP_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert any(message.startswith("GPU available") for message in messages)
    assert not any("Tip" in message for message in messages)
