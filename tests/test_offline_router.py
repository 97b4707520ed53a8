"""The offline router: BT routing loss, pair encoder, routing metrics, training, resume and the prior state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rmrouter.behaviour.table import majority_credit
from rmrouter.losses import disagreement_pairs, router_bt_loss
from rmrouter.models.embedding_store import EmbeddingCache
from rmrouter.models.pair_encoder import PairEncoder, build_mlp, build_text_encoder, pair_representation, pair_text
from rmrouter.modules.offline_router import OfflineRouterModule
from rmrouter.routers.decisions import best_eligible, majority_vote_credit

RM_NAMES = ["math_rm", "chat_rm"]
NAN = float("nan")


# ---- data helpers ----------------------------------------------------------------------------------------------


def row(prompt: str, agree: list[float], margin: list[float] | None = None, chosen: str = "a", rejected: str = "b",
        label_route: int = 0):  # fmt: skip
    margin = [1.0 if right else -1.0 for right in agree] if margin is None else margin
    return {
        "id": prompt, "domain": "toy", "source": "memory", "prompt": prompt, "chosen": chosen, "rejected": rejected,
        "agree": torch.tensor(agree), "margin": torch.tensor(margin), "eligible": ~torch.tensor(margin).isnan(),
        "label_route": torch.tensor(label_route),
    }  # fmt: skip


def as_batch(rows: list[dict]) -> dict:
    return next(iter(DataLoader(rows, batch_size=len(rows))))


def toy_rows(count: int, offset: int = 0) -> list[dict]:
    """RM 0 is right when the prompt is about math, RM 1 otherwise; every fifth row both RMs are right."""
    topics = ["bread", "dogs", "the weather", "a fox", "salt"]
    rows = []
    for index in range(offset, offset + count):
        math_prompt = index % 2 == 0
        prompt = (
            f"math: {index} + {index % 7} = ? 16 - 3 * 4 = ?" if math_prompt else f"tell me about {topics[index % 5]}"
        )
        agree = [1.0, 1.0] if index % 5 == 0 else [1.0, 0.0] if math_prompt else [0.0, 1.0]
        rows.append(row(prompt, agree, chosen=f"answer {index}", rejected=f"reply {index % 3}"))
    return rows


class RowsData(LightningDataModule):
    """Hand-made behaviour rows in memory, batched as `BehaviourDataModule` batches them."""

    def __init__(self, train: list[dict], val: list[dict], test: dict[str, list[dict]], batch_size: int):
        super().__init__()
        self.rows = {"train": train, "val": val, **test}
        self.test_split_names = list(test)
        self.batch_size = batch_size

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.rows[name], batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.rows["val"] else []  # [] runs no validation

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, shuffle=False) for name in self.test_split_names]


def make_module(encoder_dir: str, freeze_encoder: bool = True, cls_weight: float = 0.2) -> OfflineRouterModule:
    return OfflineRouterModule(
        rm_names=RM_NAMES, encoder=encoder_dir, pooling="mean", max_length=32, hidden_size=32, embedding_size=8,
        freeze_encoder=freeze_encoder, cls_weight=cls_weight, learning_rate=3e-2, weight_decay=0.0,
    )  # fmt: skip


def trainer(tmp_path: Path, max_epochs: int, **kwargs) -> Trainer:
    return Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


def toy_data(batch_size: int = 8) -> RowsData:
    return RowsData(toy_rows(48), toy_rows(16, offset=100), {"test": toy_rows(16, offset=200)}, batch_size)


# ---- losses ----------------------------------------------------------------------------------------------------


def test_disagreement_pairs_are_exactly_right_wrong_pairs_per_row():
    agree = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float)
    rows, better, worse = disagreement_pairs(agree)
    pairs = list(zip(rows.tolist(), better.tolist(), worse.tolist(), strict=True))
    assert pairs == [(0, 0, 1), (0, 0, 2), (1, 0, 2), (1, 1, 2), (4, 1, 0), (4, 1, 2)]
    with pytest.raises(ValueError, match=r"\[batch, rms\]"):
        disagreement_pairs(torch.ones(3))


def test_best_eligible_skips_rms_that_cannot_judge():
    scores = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    eligible = torch.tensor([[True, True, True], [False, True, True], [False, False, False]])
    assert best_eligible(scores, eligible).tolist() == [0, 2, 0]


def test_router_bt_loss_on_hand_computed_values():
    scores = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    agree = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # row 0: gaps 2 and 1; row 1: both right RMs tie the wrong one, gap 0 twice
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + 2 * math.log(2)) / 4
    assert router_bt_loss(scores, agree).item() == pytest.approx(expected)
    # large gaps of either sign stay finite and exact
    big = torch.tensor([[1000.0, 0.0]])
    assert router_bt_loss(big, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)
    assert router_bt_loss(big, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="one shape"):
        router_bt_loss(scores, agree[:1])


def test_router_bt_loss_without_disagreement_is_a_finite_zero_with_a_gradient_path():
    scores = torch.randn(3, 2, requires_grad=True)
    loss = router_bt_loss(scores, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(3, 2))


def test_majority_vote_credit_matches_the_behaviour_table():
    margins = torch.tensor([[1.0, -2.0, NAN], [0.0, NAN, NAN], [-1.0, -1.0, 3.0], [1.0, -1.0, 0.0], [2.0, 1.0, -5.0]])
    expected = [majority_credit(row) for row in margins.tolist()]
    assert expected == [0.5, 0.5, 0.0, 0.5, 1.0]
    assert majority_vote_credit(margins).tolist() == expected


# ---- pair encoder ----------------------------------------------------------------------------------------------


def pair_encoder(encoder_dir: str, freeze_encoder: bool) -> PairEncoder:
    torch.manual_seed(0)
    return PairEncoder(encoder_dir, "mean", 32, hidden_size=16, output_size=8, freeze_encoder=freeze_encoder)


PROMPTS, FIRST, SECOND = ["bake bread?", "math: 2 + 2"], ["Mix flour.", "4"], ["No idea.", "5 #### 5"]


def test_pair_encoder_is_symmetric_unit_norm_and_reads_the_documented_text(tiny_encoder_dir):
    encoder = pair_encoder(tiny_encoder_dir, freeze_encoder=True).eval()
    with torch.no_grad():
        h, swapped = encoder(PROMPTS, FIRST, SECOND), encoder(PROMPTS, SECOND, FIRST)
    assert h.shape == (2, 8)
    torch.testing.assert_close(h, swapped)
    torch.testing.assert_close(h.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(h[0], h[1])
    assert pair_text("bake bread?", "Mix flour.") == "bake bread?\n\nAssistant: Mix flour."
    assert pair_text([{"role": "user", "content": "hi"}], "yo") == "hi\n\nAssistant: yo"
    assert encoder.mlp_config() == {"input_size": 32, "hidden_size": 16, "output_size": 8}
    with pytest.raises(ValueError, match="lacks"):
        build_mlp({"input_size": 32})


def train_steps(encoder: PairEncoder, steps: int) -> None:
    encoder.train()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = encoder(PROMPTS, FIRST, SECOND, use_cache=True)[:, 0].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_pair_encoder_caches_and_keeps_its_weights(tiny_encoder_dir, monkeypatch):
    encoder = pair_encoder(tiny_encoder_dir, freeze_encoder=True)
    before = {key: value.clone() for key, value in encoder.encoder.state_dict().items()}
    mlp_before = encoder.mlp[0].weight.clone()
    calls = []
    encode = encoder.encoder.encode
    monkeypatch.setattr(encoder.encoder, "encode", lambda texts: calls.append(len(texts)) or encode(texts))
    train_steps(encoder, steps=3)
    assert calls == [4]  # the four distinct texts, embedded once; later steps read the cache
    assert len(encoder.cache) == 4 and not encoder.encoder.training
    assert all(not p.requires_grad for p in encoder.encoder.parameters())
    for key, value in encoder.encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"frozen encoder weight {key} changed"
    assert not torch.equal(encoder.mlp[0].weight, mlp_before)
    encoder(PROMPTS, FIRST, SECOND)  # without use_cache: new pairs neither read nor grow the cache
    assert calls == [4, 4]


def test_fine_tuned_pair_encoder_trains_its_encoder_and_caches_nothing(tiny_encoder_dir):
    encoder = pair_encoder(tiny_encoder_dir, freeze_encoder=False)
    before = {key: value.clone() for key, value in encoder.encoder.named_parameters()}
    train_steps(encoder, steps=2)
    assert encoder.encoder.training and len(encoder.cache) == 0
    changed = [key for key, value in encoder.encoder.named_parameters() if not torch.equal(value, before[key])]
    assert "model.embeddings.word_embeddings.weight" in changed and len(changed) > len(before) // 2


def scores_from_prior_state(state: dict) -> torch.Tensor:
    """Router scores of (PROMPTS, FIRST, SECOND) rebuilt from a prior's primitives alone, as the online stage does."""
    text_encoder = build_text_encoder(state["encoder"], state["pooling"], state["max_length"])
    mlp = build_mlp(state["mlp_config"])
    mlp.load_state_dict(state["mlp_state"])
    with torch.no_grad():
        first = text_encoder.encode([pair_text(p, r) for p, r in zip(PROMPTS, FIRST, strict=True)])
        second = text_encoder.encode([pair_text(p, r) for p, r in zip(PROMPTS, SECOND, strict=True)])
        return pair_representation(mlp, first, second) @ state["bt_embeddings"].T


def test_prior_state_rebuilds_the_router_scores_from_primitives(tiny_encoder_dir):
    module = make_module(tiny_encoder_dir).eval()
    state = module.prior_state()
    assert set(state) == {"rm_names", "bt_embeddings", "bt_scale", "encoder", "pooling", "max_length", "mlp_config",
                          "mlp_state"}  # fmt: skip
    assert state["rm_names"] == RM_NAMES and state["encoder"] == tiny_encoder_dir
    assert state["bt_scale"] == pytest.approx(float(module.bt_scale()))
    torch.testing.assert_close(state["bt_embeddings"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(scores_from_prior_state(state), module.router_scores(PROMPTS, FIRST, SECOND))


# ---- metrics ---------------------------------------------------------------------------------------------------

THREE_RMS = ["a", "b", "c"]


class RoutedTo(nn.Module):
    """A pair encoder stand-in: `h` is the one-hot vector of the RM named in the prompt (`route to <n>`)."""

    def __init__(self):
        super().__init__()
        self.cache = EmbeddingCache()
        self.stores_embeddings = False

    def forward(self, prompts: list[str], first: list[str], second: list[str], use_cache: bool = False) -> Tensor:
        return torch.eye(3)[[int(prompt.split()[-1]) for prompt in prompts]]


def controlled_module(tiny_encoder_dir: str) -> OfflineRouterModule:
    """Scores `s[i, n] = 1` for the RM row `i` is routed to and 0 for the others; classification logits alike."""
    module = OfflineRouterModule(
        rm_names=THREE_RMS, encoder=tiny_encoder_dir, pooling="mean", max_length=32, hidden_size=8, embedding_size=3,
        freeze_encoder=True, cls_weight=0.5, learning_rate=1e-2, weight_decay=0.0,
    )  # fmt: skip
    module.pair_encoder = RoutedTo()
    with torch.no_grad():
        module.bt_embeddings.copy_(torch.eye(3))
        module.cls_head.weight.copy_(torch.eye(3))
        module.cls_head.bias.zero_()
    return module


HAND_ROWS = [  # (routed to, agree, margin, data-label route); agree is margin > 0, NaN: the RM could not judge the row
    (0, [1, 1, 0], [1, 0.5, 0], 0),  # right; majority right
    (1, [0, 1, 0], [-1, 2, -0.5], 1),  # right; majority wrong
    (1, [0, 0, 0], [-1, -1, NAN], 0),  # no RM right: left out of every routing accuracy
    (2, [1, 1, 0], [2, 1, -1], 2),  # wrong; majority right
    (2, [0, 1, 1], [-1, 0.5, 3], 2),  # right; majority right
    (0, [1, 0, 0], [1, -1, 0], 0),  # right; majority tie
    (2, [1, 0, 0], [1, -1, NAN], -1),  # c cannot judge it: routed to a (the best eligible score), right; majority tie
]


def hand_rows() -> list[dict]:
    return [
        row(f"route to {to}", [float(a) for a in agree], margin, label_route=label)
        for to, agree, margin, label in HAND_ROWS
    ]


def auroc(preds: list[float], targets: list[int]) -> float:
    """Mann-Whitney AUROC: the share of (positive, negative) pairs ranked right, ties counting 1/2."""
    positives = [p for p, t in zip(preds, targets, strict=True) if t]
    negatives = [p for p, t in zip(preds, targets, strict=True) if not t]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_metrics_on_a_hand_made_batch(tiny_encoder_dir, tmp_path):
    module = controlled_module(tiny_encoder_dir)
    data = RowsData([], hand_rows(), {}, batch_size=4)  # two batches: 4 rows, then 3
    metrics = trainer(tmp_path, 1).validate(module, datamodule=data, verbose=False)[0]
    # routable rows 0, 1, 3, 4, 5, 6; the routed RM is right on 0, 1, 4, 5 and 6 (c is not eligible there)
    assert metrics["val/router_acc"] == pytest.approx(5 / 6)
    assert metrics["val/any_right"] == pytest.approx(6 / 7)
    # uniform over the eligible RMs: row 6 has two
    assert metrics["val/baseline/random"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3 + 2 / 3 + 1 / 3 + 1 / 2) / 6)
    assert metrics["val/baseline/single/a"] == pytest.approx(4 / 6)
    assert metrics["val/baseline/single/b"] == pytest.approx(4 / 6)
    assert metrics["val/baseline/single/c"] == pytest.approx(1 / 5)  # over the 5 routable rows it can judge
    assert metrics["val/coverage/a"] == 1.0 and metrics["val/coverage/c"] == pytest.approx(5 / 7)
    assert metrics["val/baseline/best_single"] == pytest.approx(4 / 6)  # a or b alone on every routable row
    assert metrics["val/baseline/best_single_rm"] == 0
    assert metrics["val/baseline/majority_vote"] == pytest.approx((1 + 0 + 1 + 1 + 0.5 + 0.5) / 6)
    assert metrics["val/baseline/data_label"] == pytest.approx(4 / 6)  # right on 0, 1, 4, 5; row 6 has no route
    # disagreement pairs (right, wrong) among eligible RMs, the routed RM's score 1 against 0: row 0 (a,c) won, (b,c)
    # tied; row 1 (b,a) (b,c) won; row 3 (a,c) (b,c) lost; row 4 (b,a) tied, (c,a) won; row 5 (a,b) (a,c) won;
    # row 6 (a,b) tied (c is in no pair): 7.5 of 11
    assert metrics["val/bt_pair_acc"] == pytest.approx(7.5 / 11)
    assert metrics["val/bt_pairs"] == pytest.approx((6 + 5) / 2)  # the mean count per step
    assert metrics["val/steps_without_bt_pairs"] == 0
    routed = [to for to, _, _, _ in HAND_ROWS]
    agree = torch.tensor([agree for _, agree, _, _ in HAND_ROWS], dtype=torch.float)
    eligible = ~torch.tensor([margin for _, _, margin, _ in HAND_ROWS]).isnan()
    for n, rm in enumerate(THREE_RMS):
        rows = eligible[:, n]
        expected = auroc([float(to == n) for to in torch.tensor(routed)[rows].tolist()], agree[rows, n].tolist())
        assert metrics[f"val/auroc/{rm}"] == pytest.approx(expected), rm
    scores = torch.eye(3)[routed]

    def cls(part: slice) -> float:  # BCE over the entries of eligible RMs only
        mask = eligible[part]
        return torch.nn.functional.binary_cross_entropy_with_logits(scores[part][mask], agree[part][mask]).item()

    cls_loss = (4 * cls(slice(0, 4)) + 3 * cls(slice(4, 7))) / 7  # batch means weighted by rows
    assert metrics["val/cls_loss"] == pytest.approx(cls_loss, rel=1e-5)
    bt = [router_bt_loss(scores[p], agree[p], eligible[p]).item() for p in (slice(0, 4), slice(4, 7))]
    assert metrics["val/loss"] == pytest.approx((4 * bt[0] + 3 * bt[1]) / 7 + 0.5 * cls_loss, rel=1e-5)


def test_test_metrics_are_named_by_split_and_all_agree_batches_are_finite(tiny_encoder_dir, tmp_path):
    module = controlled_module(tiny_encoder_dir)
    all_agree = [row("route to 0", [1.0, 1.0, 1.0]), row("route to 2", [1.0, 1.0, 1.0])]
    data = RowsData([], [], {"test": hand_rows(), "ood": all_agree}, batch_size=6)
    run = trainer(tmp_path, 1)
    run.test(module, datamodule=data, verbose=False)
    metrics = run.callback_metrics
    assert metrics["test/router_acc"].item() == pytest.approx(5 / 6)
    assert math.isfinite(metrics["ood/loss"].item()) and metrics["ood/bt_loss"].item() == 0.0
    assert metrics["ood/steps_without_bt_pairs"].item() == 1 and metrics["ood/bt_pairs"].item() == 0
    assert metrics["ood/router_acc"].item() == 1.0 and metrics["ood/baseline/majority_vote"].item() == 1.0
    # no disagreement pairs and one-class RMs: undefined, so NaN rather than a made-up number
    assert math.isnan(metrics["ood/bt_pair_acc"].item()) and math.isnan(metrics["ood/auroc/a"].item())
    assert module._test_stage(0) == "test" and module._test_stage(1) == "ood"
    assert controlled_module(tiny_encoder_dir)._test_stage(0) == "test"  # no trainer: the default


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_without_disagreement_is_finite_and_reaches_every_parameter(tiny_encoder_dir):
    module = make_module(tiny_encoder_dir, cls_weight=0.0)
    batch = as_batch([row("x", [1.0, 1.0]), row("y", [0.0, 0.0], margin=[NAN, -1.0])])
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    trained = [p for p in module.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    with pytest.raises(ValueError, match="one column per RM"):
        module.training_step({**batch, "agree": batch["agree"][:, :1]}, 0)


# ---- training, resume ------------------------------------------------------------------------------------------


def test_router_learns_a_toy_routing_problem(tiny_encoder_dir, tmp_path):
    torch.manual_seed(0)
    module = make_module(tiny_encoder_dir)
    encoder_before = {key: value.clone() for key, value in module.pair_encoder.encoder.state_dict().items()}
    run = trainer(tmp_path, 8, enable_checkpointing=False)
    run.fit(module, datamodule=toy_data(batch_size=4))
    metrics = run.callback_metrics
    assert metrics["val/router_acc"].item() > 0.9
    assert metrics["val/router_acc"].item() > metrics["val/baseline/best_single"].item()
    assert {"train/loss", "train/bt_loss", "train/cls_loss", "train/bt_pairs_step", "val/auroc/math_rm"} <= set(metrics)
    for key, value in module.pair_encoder.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), f"frozen encoder weight {key} changed"
    assert len(module.pair_encoder.cache) == 0  # cleared at the end of the fit
    optimized = {id(p) for group in run.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in module.pair_encoder.encoder.parameters()}
    run.test(module, datamodule=toy_data(batch_size=8), verbose=False)
    assert run.callback_metrics["test/router_acc"].item() > 0.9


def assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, dict):
            assert_same_state(value, second[key])
        elif isinstance(value, Tensor):
            assert torch.equal(value, second[key]), key
        else:
            assert value == second[key], key


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_resume_restores_heads_embeddings_and_optimizer(tiny_encoder_dir, tmp_path, freeze_encoder):
    data = RowsData(toy_rows(16), [], {}, batch_size=8)
    torch.manual_seed(0)
    first = make_module(tiny_encoder_dir, freeze_encoder=freeze_encoder)
    first_run = trainer(tmp_path, 1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    first_run.fit(first, datamodule=data)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(key.startswith("pair_encoder.encoder.") for key in saved["state_dict"]) is not freeze_encoder
    torch.manual_seed(1)  # other initial weights, which the checkpoint must replace
    second = make_module(tiny_encoder_dir, freeze_encoder=freeze_encoder)
    second_run = trainer(tmp_path, 1, enable_checkpointing=False)
    second_run.fit(second, datamodule=data, ckpt_path=tmp_path / "last.ckpt")  # already at max_epochs: restores only
    assert second_run.global_step == 2
    assert_same_state(first.state_dict(), second.state_dict())
    assert_same_state(first_run.optimizers[0].state_dict(), second_run.optimizers[0].state_dict())
    if freeze_encoder:
        assert_same_state(first.prior_state(), second.prior_state())
    else:
        with pytest.raises(ValueError, match="fine-tuned its encoder"):
            first.prior_state()  # its name alone would load the weights from before fine-tuning


def test_prior_of_a_fine_tuned_encoder_names_a_folder_with_its_weights(tiny_encoder_dir, tmp_path):
    module = make_module(tiny_encoder_dir, freeze_encoder=False).eval()
    with torch.no_grad():
        for parameter in module.pair_encoder.encoder.parameters():
            parameter.add_(0.01)  # stands in for fine-tuning: the weights now differ from the folder's
    state = module.prior_state(encoder_dir=tmp_path / "prior-encoder")
    assert state["encoder"] == str(tmp_path / "prior-encoder")
    torch.testing.assert_close(scores_from_prior_state(state), module.router_scores(PROMPTS, FIRST, SECOND))
