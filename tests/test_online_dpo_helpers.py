"""The online DPO module's step logging and trained-weights checkpoints, as plain functions (no model, no trainer)."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rmrouter.data.records import PromptRecord, as_messages
from rmrouter.online.logs import log_completions, log_labelling, log_samples, samples_markdown
from rmrouter.policy.checkpoint import check_trainable_weights, keep_trainable_weights, trainable_names
from rmrouter.policy.generation import Completion


def recorder() -> tuple[dict[str, float], Callable]:
    logged: dict[str, float] = {}

    def log(name, value):
        logged[name] = float(value)

    return logged, log


def test_labelling_counts_ties_as_wrong_and_splits_by_domain():
    logged, log = recorder()
    pairs = SimpleNamespace(domains=["math", "chat", "math", "chat"])
    candidates = SimpleNamespace(pairs=pairs, truth=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    domains, correct = log_labelling(log, candidates, torch.tensor([1.0, -1.0, 0.0, -1.0]))
    assert logged == {"train/labelling_acc": 0.5, "train/labelling_acc/chat": 0.5, "train/labelling_acc/math": 0.5}
    assert list(logged) == ["train/labelling_acc", "train/labelling_acc/chat", "train/labelling_acc/math"]
    assert domains == ["math", "chat", "math", "chat"]
    assert correct.dtype == torch.bool and correct.tolist() == [True, True, False, False]


def test_completions_log_eos_rate_and_every_rm_error_count():
    logged, log = recorder()
    completions = [[Completion("a", [1, 2], True), Completion("b", [1], False)], [Completion("c", [3], True)] * 2]
    log_completions(log, completions, SimpleNamespace(errors={"right": 0, "wrong": 3}))
    assert logged == {"train/eos_rate": 0.75, "train/rm_errors/right": 0.0, "train/rm_errors/wrong": 3.0}
    logged.clear()
    log_completions(log, completions, object())  # a judge without error counts
    assert logged == {"train/eos_rate": 0.75}


def prompt(domain: str, text: str) -> PromptRecord:
    return PromptRecord(id=text, prompt=as_messages(text), domain=domain, source="test")


def test_samples_show_two_prompts_and_mark_cut_completions():
    batch = [prompt("math", "1+1?"), prompt("chat", "hi"), prompt("code", "never shown")]
    completions = [[Completion("2", [5], True), Completion("two and", [6], False)], [Completion("hello", [7], True)]]
    completions.append([Completion("unseen", [8], True)])
    text = samples_markdown(batch, completions)
    assert text == "**math** `1+1?`\n\n- 2\n\n- (cut) two and\n\n**chat** `hi`\n\n- hello"


@pytest.mark.parametrize(("step", "every", "written"), [(4, 2, True), (3, 2, False), (0, 0, False)])
def test_samples_go_to_the_logger_every_n_steps(step, every, written):
    calls = []
    logger = SimpleNamespace(experiment=SimpleNamespace(add_text=lambda *args: calls.append(args)))
    batch, completions = [prompt("math", "q")], [[Completion("a", [1], True)]]
    log_samples(logger, batch, completions, step, every)
    assert calls == ([("train/samples", "**math** `q`\n\n- a", step)] if written else [])
    log_samples(None, batch, completions, step, every)  # no logger, or one without text: nothing, no error
    log_samples(SimpleNamespace(experiment=object()), batch, completions, step, every)


def test_samples_go_to_loggers_without_tensorboards_text_tab(tmp_path):
    batch, completions = [prompt("math", "q")], [[Completion("a", [1], True), Completion("b c", [2], False)]]
    markdown = samples_markdown(batch, completions)
    mlflow_calls, wandb_calls = [], []
    mlflow = SimpleNamespace(experiment=SimpleNamespace(log_text=lambda *a: mlflow_calls.append(a)), run_id="r1")
    log_samples(mlflow, batch, completions, 4, 2)
    assert mlflow_calls == [("r1", markdown, "samples/step_4.md")]
    wandb = SimpleNamespace(experiment=object(), log_text=lambda **kw: wandb_calls.append(kw))
    log_samples(wandb, batch, completions, 4, 2)
    assert wandb_calls == [{"key": "train/samples", "columns": ["step", "samples"], "data": [[4, markdown]]}]
    csv_like = SimpleNamespace(experiment=object(), log_dir=str(tmp_path / "csv"))
    log_samples(csv_like, batch, completions, 4, 2)
    log_samples(csv_like, batch, completions, 6, 2)
    lines = [json.loads(line) for line in (tmp_path / "csv" / "samples.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 6]
    assert lines[0]["samples"] == [
        {
            "domain": "math",
            "prompt": "q",
            "completions": [{"text": "a", "ended": True}, {"text": "b c", "ended": False}],
        }
    ]


def test_trainable_names_match_the_full_state_dict_under_fsdp_wrappers():
    frozen, trained = nn.Parameter(torch.zeros(1), requires_grad=False), nn.Parameter(torch.zeros(1))
    named = [
        ("model.embed.weight", frozen),
        ("model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.q.lora_A.weight", trained),
        ("model.layers.1.q.lora_B.weight", trained),
    ]
    assert trainable_names(named) == {"model.layers.0.q.lora_A.weight", "model.layers.1.q.lora_B.weight"}


def test_checkpoints_keep_and_require_exactly_the_trained_weights():
    checkpoint = {"state_dict": {"base.w": 1, "lora.a": 2, "lora.b": 3}, "epoch": 4}
    keep_trainable_weights(checkpoint, {"lora.a", "lora.b"})
    assert checkpoint == {"state_dict": {"lora.a": 2, "lora.b": 3}, "epoch": 4}
    check_trainable_weights(checkpoint, {"lora.a", "lora.b"})
    with pytest.raises(KeyError, match=r"lacks 1 trained weights.*lora\.c"):
        check_trainable_weights(checkpoint, {"lora.a", "lora.c"})
