"""The task-aware router: its math by hand, and the module on a hand-built case of labelled and unlabelled pairs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES as POOL_RM_NAMES
from behaviour_helpers import write_behaviour
from config_helpers import flatten
from test_offline_router import RM_NAMES, RowsData, toy_rows, trainer

from rmrouter.callbacks.routing_predictions import read_predictions
from rmrouter.cli import main
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.modules.task_router import TaskRouterModule
from rmrouter.routers.task_aware import (
    UNKNOWN_TASK,
    empirical_reliability,
    right_logits,
    right_probabilities,
    task_indices,
    task_probabilities,
)
from rmrouter.routers.task_prior import TaskPrior

TASKS = ["math", "chat"]


def test_task_indices_mark_labels_outside_the_tasks_unknown():
    assert task_indices(["chat", "koala", "math"], TASKS).tolist() == [1, UNKNOWN_TASK, 0]


def test_a_known_task_is_one_hot_and_an_unknown_one_the_task_heads_softmax():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    probabilities = task_probabilities(logits, torch.tensor([UNKNOWN_TASK, 0]))
    torch.testing.assert_close(probabilities, torch.tensor([[0.25, 0.75], [1.0, 0.0]]))


def test_right_probabilities_mix_the_tasks_reliabilities_by_hand():
    reliability = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # sigmoids 0.5/0.75 and 0.75/0.5
    residual = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    task_probs = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    expected = [[0.5 * 0.5 + 0.5 * 0.75, 0.5 * 0.75 + 0.5 * 0.5], [9 / 10, 0.5]]  # sigmoid(2 log 3) = 9/10
    torch.testing.assert_close(right_probabilities(reliability, residual, task_probs), torch.tensor(expected))
    logits = right_logits(reliability, residual, torch.tensor([1, 1]))
    torch.testing.assert_close(logits, torch.tensor([[math.log(3.0), 0.0], [2 * math.log(3.0), 0.0]]))
    with pytest.raises(ValueError, match="needs every pair's task"):
        right_logits(reliability, residual, torch.tensor([0, UNKNOWN_TASK]))


def task_rows(count: int, offset: int = 0, labelled: bool = True) -> list[dict]:
    """`toy_rows` with their task as the domain (RM 0 is right on math, RM 1 on chat, both on every fifth row), or
    a domain no task has when `labelled` is false."""
    rows = toy_rows(count, offset)
    for row in rows:
        row["domain"] = ("math" if row["prompt"].startswith("math") else "chat") if labelled else "unlabelled"
    return rows


def make_task_module(encoder_dir: str, residual: bool = True, route_with_labels: bool = True) -> TaskRouterModule:
    return TaskRouterModule(
        rm_names=RM_NAMES, tasks=TASKS, encoder=encoder_dir, pooling="mean", max_length=32, hidden_size=32,
        embedding_size=8, freeze_encoder=True, task_weight=1.0, learning_rate=3e-2, weight_decay=0.0,
        residual=residual, route_with_labels=route_with_labels,
    )  # fmt: skip


def test_without_a_residual_the_reliabilities_become_each_rms_accuracy_per_task(tmp_path, tiny_encoder_dir):
    torch.manual_seed(0)
    module = make_task_module(tiny_encoder_dir, residual=False)
    data = RowsData(task_rows(48), task_rows(16, offset=100), {"test": task_rows(16, offset=200)}, batch_size=8)
    trainer(tmp_path, max_epochs=30).fit(module, data)
    accuracy = torch.sigmoid(module.reliability.detach())
    # training rows: RM 0 right on every math row and on 1 chat row in 5, RM 1 the other way round
    assert accuracy[0, 0] > 0.9 and accuracy[1, 1] > 0.9  # a logit on its way to +inf
    assert accuracy[0, 1].item() == pytest.approx(0.2, abs=0.05) and accuracy[1, 0].item() == pytest.approx(
        0.2, abs=0.05
    )
    assert module.residual_head.weight.abs().max() == 0  # never trained


def test_labelled_pairs_route_by_their_task_and_unlabelled_ones_by_the_task_head(tmp_path, tiny_encoder_dir):
    torch.manual_seed(0)
    module = make_task_module(tiny_encoder_dir, residual=False)  # no per-pair help: only the task head tells
    test = {"test": task_rows(16, offset=200), "unlabelled": task_rows(16, offset=200, labelled=False)}
    data = RowsData(task_rows(48), task_rows(16, offset=100), test, batch_size=8)
    fit = trainer(tmp_path, max_epochs=30)
    fit.fit(module, data)
    metrics = fit.test(module, data, verbose=False)
    labelled, unlabelled = metrics
    assert labelled["test/router_acc"] == 1.0
    assert labelled["test/task_acc"] == 1.0  # the task head learned math from chat, on prompts it never saw
    assert unlabelled["unlabelled/router_acc"] == 1.0  # so pairs without a label route as well


def test_a_training_pair_of_a_domain_outside_the_tasks_is_an_error_naming_the_key(tmp_path, tiny_encoder_dir):
    module = make_task_module(tiny_encoder_dir)
    data = RowsData(task_rows(8, labelled=False), [], {"test": task_rows(4)}, batch_size=8)
    with pytest.raises(
        ValueError, match=r"domains \['unlabelled'\] are not in model.init_args.tasks=\['math', 'chat'\]"
    ):
        trainer(tmp_path, max_epochs=1).fit(module, data)


ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIG = ROOT / "configs" / "offline_router_task.yaml"


def test_the_task_router_config_is_the_paper_routers_but_for_its_model_and_paths():
    """Compared on the same rows with the same training: only the model and where runs write differ."""
    default = flatten(yaml.safe_load((ROOT / "configs" / "offline_router.yaml").read_text()))
    task = flatten(yaml.safe_load(TASK_CONFIG.read_text()))
    outside_model = {key for key in {*default, *task} if not key.startswith("model.")}
    changed = sorted(key for key in outside_model if default.get(key) != task.get(key))
    paths = ("dir", "save_dir", "dirpath", "init_args.path", "init_args.command")
    assert changed and all(key.endswith(paths) for key in changed), changed


def test_fit_test_and_predict_from_the_shipped_config_with_and_without_labels(tmp_path, monkeypatch, tiny_encoder_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl")
    common = ["--config", str(TASK_CONFIG), "--model.init_args.encoder", tiny_encoder_dir, "--trainer.max_epochs", "2",
              "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    checkpoint = "checkpoints/offline_router_task/best.ckpt"
    main(["fit", *common])
    prior = TaskPrior.load(tmp_path / "checkpoints" / "offline_router_task" / "prior.pt")  # the online router's
    assert prior.rm_names == POOL_RM_NAMES and prior.tasks == yaml.safe_load(TASK_CONFIG.read_text())["model"][
        "init_args"]["tasks"] and prior.metadata["selected"].endswith("best.ckpt")  # fmt: skip
    main(["test", *common, "--ckpt_path", checkpoint])
    report = (tmp_path / "checkpoints" / "offline_router_task" / "report.md").read_text()
    assert "| task-aware router |" in report and "| method | test | ood | ood/koala | ood/math |" in report
    main(["predict", *common, "--ckpt_path", checkpoint, "--model.init_args.route_with_labels", "false"])
    header, rows = read_predictions(tmp_path / "checkpoints" / "offline_router_task" / "predictions.jsonl")
    assert header["rm_names"] == POOL_RM_NAMES and {row["split"] for row in rows} >= {"test", "ood"}
    assert all(0.0 <= score <= 1.0 for row in rows for score in row["scores"])  # probabilities that an RM is right


def test_the_task_router_on_the_real_pool_is_its_default_config_with_the_pools_names_and_paths():
    default = flatten(yaml.safe_load(TASK_CONFIG.read_text()))
    config = yaml.safe_load((ROOT / "configs" / "offline_router_task_llmbar.yaml").read_text())
    real = flatten(config)
    assert default.keys() == real.keys()
    changed = {key for key in default if default[key] != real[key]}
    allowed = ("rm_names", "tasks", "data.init_args.path", "data.init_args.split", "dir", "init_args.command",
               "init_args.about")  # fmt: skip
    assert changed and all(key.endswith(allowed) for key in changed), sorted(changed)
    from rmrouter.data.llmbar import LLMBarPairs

    held_out = set(split_named_by(ROOT / "configs" / "offline_router_task_llmbar.yaml").ood_domains)
    assert config["model"]["init_args"]["tasks"] == sorted({p.domain for p in LLMBarPairs().load()} - held_out)


def test_the_tasks_are_the_shipped_large_sets_domains_but_the_held_out_one():
    from rmrouter.data.behaviour import read_behaviour

    config = yaml.safe_load(TASK_CONFIG.read_text())
    held_out = set(split_named_by(TASK_CONFIG).ood_domains)
    domains = {record.pair.domain for record in read_behaviour(ROOT / "rmrouter" / "shipped" / "behaviour_large")}
    assert config["model"]["init_args"]["tasks"] == sorted(domains - held_out)


def test_empirical_reliability_is_laplaces_rule_per_task_by_hand():
    right = torch.tensor([[True, False], [True, True], [True, False], [False, True], [False, True]])
    eligible = torch.tensor([[True, True], [True, True], [True, False], [True, True], [True, True]])
    labels = ["math", "math", "math", "chat", "koala"]  # koala is no task: left out
    expected = torch.logit(torch.tensor([[4 / 5, 2 / 4], [1 / 3, 2 / 3], [0.5, 0.5]]))  # RM 1 judged 2 math rows
    expected[2] = 0.0  # a task without rows: a coin
    torch.testing.assert_close(empirical_reliability(labels, right, eligible, [*TASKS, "safety"]), expected)


def test_a_fit_starts_at_the_lookup_of_its_training_split(tiny_encoder_dir):
    from types import SimpleNamespace

    from behaviour_helpers import record_of

    from rmrouter.data.behaviour_datamodule import BehaviourPairs
    from rmrouter.data.records import PreferenceRecord

    margins = [("math", [1.0, -1.0]), ("math", [1.0, 1.0]), ("chat", [-1.0, 1.0])]
    records = [
        record_of(PreferenceRecord(f"r{i}", [{"role": "user", "content": "q"}], "a", "b", domain, "s"),
                  dict(zip(RM_NAMES, margin, strict=True)))
        for i, (domain, margin) in enumerate(margins)
    ]  # fmt: skip
    module = make_task_module(tiny_encoder_dir)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(splits={"train": BehaviourPairs(records, RM_NAMES)}))
    module.setup("fit")
    expected = torch.logit(torch.tensor([[3 / 4, 2 / 4], [1 / 3, 2 / 3]]))
    torch.testing.assert_close(module.reliability.detach(), expected)
    with torch.no_grad():
        module.reliability.zero_()  # as a checkpoint's weights would be
    module.setup("validate")  # only a fit starts at the lookup
    assert module.reliability.abs().max() == 0
