"""The behaviour DataModule: prompt-keyed splits, held-out ood rows, batch layout, and refusals of bad files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import record_of
from lightning.pytorch import LightningModule, Trainer

from rmrouter.data.behaviour import BehaviourRecord
from rmrouter.data.behaviour_datamodule import BehaviourDataModule
from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.data.jsonl import DataError
from rmrouter.data.records import PreferenceRecord, as_messages

RM_NAMES = ["verifier", "length", "safety"]
DOMAINS = {"math": "gsm8k/solutions", "safety": "hh-rlhf/harmless-base", "chat": "alpaca_eval/koala"}
HALVES = {"train": 0.5, "test": 0.5}
REAL_FILE = Path(__file__).resolve().parents[1] / "checkpoints" / "behaviour" / "default.jsonl"
OFFLINE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "offline_router.yaml"


def margins_of(i: int) -> dict[str, float]:
    """Known margins: the verifier is right on even rows, length on rows divisible by 3, safety abstains on odd."""
    return {
        "verifier": 1.0 if i % 2 == 0 else -1.0,
        "length": float(i % 3 == 0) * 5.0 - (i % 3 == 1) * 2.0,  # 5, -2, 0 (a tie does not agree)
        "safety": math.nan if i % 2 else 0.5 + i,
    }


def make_records(count: int = 30) -> list[BehaviourRecord]:
    """Three pairs per prompt, so a prompt-keyed split must keep them together."""
    records = []
    for i in range(count):
        domain = list(DOMAINS)[i % 3]
        pair = PreferenceRecord(
            id=f"p{i}",
            prompt=as_messages(f"question {i // 3}"),
            chosen=f"good {i}",
            rejected=f"bad {i}",
            domain=domain,
            source=DOMAINS[domain] if i < 20 else "other/extra",
        )
        records.append(record_of(pair, margins_of(i)))
    return records


def write_behaviour(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def behaviour_file(tmp_path) -> str:
    rows = []
    for record in make_records():
        row = record.to_dict()
        # The file lists RMs in another order than the pool: columns must follow rm_names, not the JSON.
        row["scores"] = dict(reversed(list(row["scores"].items())))
        row["agree"] = dict(reversed(list(row["agree"].items())))
        rows.append(row)
    return write_behaviour(tmp_path / "behaviour.jsonl", rows)


SPLIT_KEYS = {"split_fractions": "fractions", "split_seed": "seed", "ood_domains": "ood_domains",
              "ood_sources": "ood_sources"}  # fmt: skip


def split(**settings) -> BehaviourSplit:
    return BehaviourSplit(**{SPLIT_KEYS[key]: value for key, value in settings.items()})


def make_module(path: str, **overrides) -> BehaviourDataModule:
    settings = {key: overrides.pop(key) for key in list(overrides) if key in SPLIT_KEYS}
    module = BehaviourDataModule(**{"path": path, "rm_names": RM_NAMES, "batch_size": 4, "split": split(**settings),
                                    **overrides})  # fmt: skip
    module.setup("fit")
    return module


def split_ids(module: BehaviourDataModule) -> dict[str, list[str]]:
    return {name: [r.pair.id for r in dataset.records] for name, dataset in module.splits.items()}


def test_splits_are_disjoint_cover_every_row_and_keep_prompts_together(behaviour_file):
    module = make_module(behaviour_file, split_fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    ids = split_ids(module)
    assert sorted(ids) == ["test", "train", "val"]
    assert sorted(sum(ids.values(), [])) == sorted(f"p{i}" for i in range(30))
    assert all(ids.values()), ids  # 10 prompts over three splits: each gets some at this seed
    assert module.split_sizes == {name: len(rows) for name, rows in ids.items()}
    prompt_split = {}
    for name, dataset in module.splits.items():
        for record in dataset.records:
            assert prompt_split.setdefault(record.pair.prompt[0]["content"], name) == name


def test_splits_are_deterministic_and_depend_on_the_seed(behaviour_file):
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    first = split_ids(make_module(behaviour_file, split_fractions=fractions))
    assert split_ids(make_module(behaviour_file, split_fractions=fractions)) == first
    assert split_ids(make_module(behaviour_file, split_fractions=fractions, split_seed=1)) != first


def test_setup_is_idempotent_and_loaders_need_it(behaviour_file):
    module = BehaviourDataModule(behaviour_file, RM_NAMES)
    module.prepare_data()
    assert module.splits is None
    with pytest.raises(RuntimeError, match="call setup"):
        module.train_dataloader()
    module.setup("fit")
    splits = module.splits
    module.setup("test")
    assert module.splits is splits


def test_ood_holds_out_exactly_the_named_domains_and_sources(behaviour_file):
    module = make_module(behaviour_file, ood_domains=["safety"], ood_sources=["other"], split_fractions=HALVES)
    expected = sorted(r.pair.id for r in make_records() if r.pair.domain == "safety" or r.pair.source == "other/extra")
    ids = split_ids(module)
    assert sorted(ids["ood"]) == expected
    assert not set(expected) & set(ids["train"] + ids["val"] + ids["test"])
    assert len(sum(ids.values(), [])) == 30
    assert module.test_split_names == ["test", "ood", "ood/chat", "ood/math", "ood/safety"]
    assert len(module.test_dataloader()) == len(module.test_split_names)
    by_source = split_ids(make_module(behaviour_file, ood_sources=["hh-rlhf/"]))
    assert sorted(by_source["ood"]) == sorted(r.pair.id for r in make_records() if r.pair.source.startswith("hh-rlhf"))


def test_an_ood_split_of_several_domains_is_also_evaluated_per_domain(behaviour_file):
    module = make_module(behaviour_file, ood_domains=["safety"], ood_sources=["other"], split_fractions=HALVES)
    ood = module.splits["ood"].records
    views = {name: [r.pair.id for r in dataset.records] for name, dataset in module.ood_by_domain.items()}
    assert views == {f"ood/{d}": [r.pair.id for r in ood if r.pair.domain == d] for d in ("chat", "math", "safety")}
    assert {name: module.split_sizes[name] for name in views} == {name: len(ids) for name, ids in views.items()}
    assert sum(len(ids) for ids in views.values()) == len(ood)
    # one ood domain: the view would repeat `ood`, so there is none
    single = make_module(behaviour_file, ood_domains=["safety"], split_fractions=HALVES)
    assert single.ood_by_domain == {} and single.test_split_names == ["test", "ood"]


def test_train_splits_serve_the_named_splits_only(behaviour_file):
    settings = {"ood_domains": ["safety"], "split_fractions": {"train": 0.5, "test": 0.5}}
    reference = split_ids(make_module(behaviour_file, **settings))
    module = make_module(behaviour_file, train_splits=["test", "ood"], **settings)
    assert split_ids(module) == reference  # the splits themselves do not move
    served = [pair_id for batch in module.train_dataloader() for pair_id in batch["id"]]
    assert sorted(served) == sorted(reference["test"] + reference["ood"])
    with pytest.raises(ValueError, match=r"train_splits must name splits among \['train', 'val', 'test'\]"):
        BehaviourDataModule(behaviour_file, RM_NAMES, train_splits=["ood"])
    with pytest.raises(ValueError, match=r"the val split is empty"):
        make_module(behaviour_file, split_fractions={"train": 1.0}, train_splits=["val"])


def test_ood_names_that_match_nothing_are_warned_about(behaviour_file, caplog):
    with caplog.at_level(logging.WARNING, logger="rmrouter.data.behaviour_datamodule"):
        module = make_module(behaviour_file, ood_domains=["safty"], split_fractions=HALVES)
    assert module.split_sizes["ood"] == 0 and module.test_split_names == ["test"]
    assert "['safty'] match no row" in caplog.text


def test_batches_have_the_documented_layout_in_rm_names_order(behaviour_file):
    module = make_module(behaviour_file, split_fractions={"train": 1.0}, rm_names=["safety", "verifier", "length"])
    batches = list(module.train_dataloader())
    assert [len(b["id"]) for b in batches] == [4] * 7 + [2]
    batch = batches[0]
    assert set(batch) == {"id", "domain", "source", "prompt", "chosen", "rejected", "agree", "margin", "eligible",
                          "scores", "label_route"}  # fmt: skip
    assert all(isinstance(batch[k], list) and isinstance(batch[k][0], str) for k in ("id", "prompt", "chosen"))
    assert batch["agree"].shape == batch["margin"].shape == batch["eligible"].shape == (4, 3)
    assert batch["scores"].shape == (4, 3, 2) and batch["label_route"].shape == (4,)
    assert batch["agree"].dtype == batch["margin"].dtype == torch.float32 and batch["eligible"].dtype == torch.bool
    for row, pair_id in enumerate(batch["id"]):
        i = int(pair_id[1:])
        assert batch["prompt"][row] == f"question {i // 3}" and batch["chosen"][row] == f"good {i}"
        expected = margins_of(i)
        for column, name in enumerate(["safety", "verifier", "length"]):
            margin = batch["margin"][row, column].item()
            assert math.isnan(margin) if math.isnan(expected[name]) else margin == expected[name]
            assert batch["agree"][row, column].item() == float(expected[name] > 0)
            assert batch["eligible"][row, column].item() == (not math.isnan(expected[name]))
            if not math.isnan(expected[name]):  # record_of scores chosen at the margin and rejected at 0
                assert batch["scores"][row, column].tolist() == [expected[name], 0.0]


def test_training_order_is_seeded(behaviour_file):
    def order(seed: int) -> list[str]:
        module = make_module(behaviour_file, split_fractions={"train": 1.0}, seed=seed)
        return [i for batch in module.train_dataloader() for i in batch["id"]]

    assert order(0) == order(0) != order(1)


def test_empty_val_and_test_give_no_loaders_with_a_warning(behaviour_file, caplog):
    module = make_module(behaviour_file, split_fractions={"train": 1.0})
    with caplog.at_level(logging.WARNING, logger="rmrouter.data.behaviour_datamodule"):
        assert module.val_dataloader() == [] and module.test_dataloader() == []
    assert "the val split is empty" in caplog.text and "the test split is empty" in caplog.text
    assert module.test_split_names == []


def test_an_empty_train_split_is_refused_naming_the_keys_to_change(behaviour_file):
    with pytest.raises(ValueError, match=r"train split is empty.*split's train fraction.*ood_domains"):
        make_module(behaviour_file, ood_domains=list(DOMAINS))
    with pytest.raises(ValueError, match="must name 'train'"):
        BehaviourSplit(fractions={"val": 1.0})


def test_evaluate_all_makes_every_row_the_evaluated_split_without_a_train_split(behaviour_file, caplog):
    # the settings that leave no train split (every domain held out) are unused with evaluate_all
    module = make_module(behaviour_file, ood_domains=list(DOMAINS), evaluate_all=True)
    ids = [f"p{i}" for i in range(30)]
    assert sorted(r.pair.id for r in module.splits["test"].records) == sorted(ids)
    assert module.splits["val"] is module.splits["test"] and len(module.splits["train"]) == 0
    assert module.test_split_names == ["test"] and len(module.test_dataloader()) == 1
    assert module.split_sizes == {"train": 0, "val": 30, "test": 30}
    assert module.evaluation_name == "behaviour" and make_module(behaviour_file).evaluation_name is None
    assert "data-label routing is fitted on the evaluated rows" in caplog.text
    # data-label routing is fitted on the rows themselves: the verifier (right on even rows) for every domain
    assert (module.splits["test"].label_route >= 0).all()
    batch = next(iter(module.val_dataloader()))
    assert batch["agree"].shape == (4, len(RM_NAMES))
    with pytest.raises(ValueError, match="evaluate_all serves every row for evaluation.*fit without it"):
        module.train_dataloader()


def test_a_pool_without_an_rm_of_the_file_is_refused_naming_the_missing_rm(behaviour_file):
    with pytest.raises(DataError) as error:
        make_module(behaviour_file, rm_names=["verifier", "length", "judge"])
    message = str(error.value)
    assert f"{behaviour_file}:1:" in message
    assert "no scores of RMs ['judge']" in message and str(sorted(RM_NAMES)) in message


def test_a_smaller_pool_reads_its_columns_of_a_bigger_pools_file(behaviour_file, caplog):
    full = make_module(behaviour_file)
    with caplog.at_level(logging.INFO, logger="rmrouter.data.behaviour_datamodule"):
        smaller = make_module(behaviour_file, rm_names=["safety", "verifier"])
    assert "the file's other RMs ['length'] are left out" in caplog.text
    assert split_ids(smaller) == split_ids(full)
    columns = [RM_NAMES.index("safety"), RM_NAMES.index("verifier")]
    for name, dataset in smaller.splits.items():
        assert torch.equal(dataset.agree, full.splits[name].agree[:, columns]), name
        assert all(list(record.scores) == ["safety", "verifier"] for record in dataset.records)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("scores", {"verifier": [-1.0, 0.0], "length": [2.0, 0.0]}, r"no scores of RMs \['safety'\]"),
        ("scores", {"verifier": -1.0, "length": [2.0, 0.0], "safety": None}, "RM 'verifier' has -1.0"),
        ("agree", {"verifier": False, "length": True}, "no true/false label for RM 'safety'"),
        ("agree", None, "field 'agree' missing"),
        ("agree", {"verifier": True, "length": True, "safety": False}, "RM 'verifier' is labelled True"),
    ],
)
def test_a_row_missing_a_label_or_scores_is_refused_naming_file_and_line(tmp_path, field, value, expected):
    rows = [record.to_dict() for record in make_records(5)]
    rows[3][field] = value  # row 3 is p3: verifier wrong, length right, safety abstains
    path = write_behaviour(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=expected) as error:
        make_module(path)
    assert f"{path}:4:" in str(error.value)


class RecordsTestBatches(LightningModule):
    def __init__(self):
        super().__init__()
        self.seen: dict[int, list[str]] = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seen.setdefault(dataloader_idx, []).extend(batch["id"])


def test_trainer_runs_test_then_ood_in_test_split_names_order(behaviour_file):
    module = BehaviourDataModule(
        behaviour_file, RM_NAMES, split(ood_domains=["safety"], ood_sources=["other"], split_fractions=HALVES)
    )
    model = RecordsTestBatches()
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=module, verbose=False)
    assert module.test_split_names == ["test", "ood", "ood/chat", "ood/math", "ood/safety"]
    splits = {**module.splits, **module.ood_by_domain}
    for index, name in enumerate(module.test_split_names):
        assert sorted(model.seen[index]) == sorted(r.pair.id for r in splits[name].records)


@pytest.mark.skipif(
    not REAL_FILE.is_file(), reason="the default pool's behaviour file is not collected in this checkout"
)
def test_real_behaviour_file_holds_out_safety():
    rm_names = yaml.safe_load(OFFLINE_CONFIG.read_text())["model"]["init_args"]["rm_names"]
    module = make_module(str(REAL_FILE), rm_names=rm_names, ood_domains=["safety"])
    sizes = module.split_sizes
    assert sizes["ood"] == 120 and sum(sizes.values()) == 540
    batch = next(iter(module.train_dataloader()))
    in_distribution = {"math", "helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    assert batch["agree"].shape == (4, len(rm_names)) and set(batch["domain"]) <= in_distribution
