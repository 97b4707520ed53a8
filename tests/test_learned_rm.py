"""The learned reward model: BT loss, the text encoder, the preference DataModule, training, checkpoints, the RM."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from rmrouter.cli import main as cli_main
from rmrouter.data.preference_datamodule import PreferenceDataModule
from rmrouter.data.records import PreferenceRecord
from rmrouter.data.sources import PreferenceSource
from rmrouter.losses import bradley_terry_loss, pair_accuracy
from rmrouter.models.encoder import TextEncoder
from rmrouter.modules.learned_reward import BradleyTerryRewardModule, compose_text
from rmrouter.reward_models.learned import LearnedRewardModel

ROOT = Path(__file__).resolve().parents[1]
SAFETY_CONFIG = ROOT / "configs" / "learned_rm" / "safety.yaml"
TEXTS = ["the quick brown fox", "bake bread", "Janet sells 16 duck eggs a day and makes 18 dollars. #### 18", "dog"]


class ListSource(PreferenceSource):
    """Records given in memory (the split and limit logic of every source still applies)."""

    def __init__(self, records: list[PreferenceRecord], limit: int | None = None):
        super().__init__(limit=limit)
        self.records = records

    def read(self) -> list[PreferenceRecord]:
        return list(self.records)


def marker_pairs(count: int) -> list[PreferenceRecord]:
    """A separable preference: the chosen response ends with `fox`, the rejected one with `dog`."""
    stems = ["Mix flour and water", "Janet sells eggs", "The quick brown", "how do I bake", "salt and yeast"]
    return [
        PreferenceRecord(
            id=f"toy-{index}",
            prompt=[{"role": "user", "content": f"question {index}: {stems[index % len(stems)]}?"}],
            chosen=f"{stems[(index + 1) % len(stems)]} fox",
            rejected=f"{stems[(index + 1) % len(stems)]} dog",
            domain="toy",
            source="memory",
        )
        for index in range(count)
    ]


def make_module(encoder_dir: str, freeze_encoder: bool = True) -> BradleyTerryRewardModule:
    return BradleyTerryRewardModule(
        encoder=encoder_dir, pooling="mean", normalize_embeddings=True, max_length=64, freeze_encoder=freeze_encoder,
        head_hidden=32, learning_rate=1e-2, weight_decay=0.0,
    )  # fmt: skip


def fit(module: BradleyTerryRewardModule, tmp_path: Path, max_epochs: int, **trainer_kwargs) -> Trainer:
    data = PreferenceDataModule(
        train=[ListSource(marker_pairs(40))], val=[ListSource(marker_pairs(40)[:16])], batch_size=8
    )
    trainer = Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return trainer


# ---- losses ----------------------------------------------------------------------------------------------------


def test_bradley_terry_loss_on_hand_computed_values():
    equal = torch.tensor([0.3, -1.0, 5.0])
    assert bradley_terry_loss(equal, equal).item() == pytest.approx(math.log(2))
    # margins 1 and -1: (log(1 + e^-1) + log(1 + e^1)) / 2
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(expected)
    # large margins stay finite and exact: ~0 when right, ~margin when wrong
    assert bradley_terry_loss(torch.tensor([1000.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-12)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1000.0])).item() == pytest.approx(1000.0)


def test_pair_accuracy_counts_ties_as_half_and_rejects_bad_shapes():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, -3.0])
    assert pair_accuracy(chosen, rejected).item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no pairs"):
        pair_accuracy(torch.zeros(0), torch.zeros(0))


# ---- encoder ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "last_token"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("model_dir", ["tiny_encoder_dir", "tiny_causal_lm_dir"])
def test_padded_batch_matches_each_text_alone(request, model_dir, pooling, padding_side):
    encoder = TextEncoder(
        request.getfixturevalue(model_dir), pooling, 64, truncation_side="left", normalize=False
    ).eval()
    encoder.tokenizer.padding_side = padding_side
    with torch.no_grad():
        batched = encoder.encode(TEXTS)
        alone = torch.cat([encoder.encode([text]) for text in TEXTS])
    assert batched.shape == (len(TEXTS), encoder.hidden_size)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_pad_token_fallback_and_left_truncation(tiny_causal_lm_dir, monkeypatch):
    from rmrouter.models import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "load_tokenizer", _without_pad_token(encoder_module.load_tokenizer))
    encoder = TextEncoder(tiny_causal_lm_dir, "last_token", max_length=4, truncation_side="left", normalize=True)
    assert encoder.tokenizer.pad_token == encoder.tokenizer.eos_token
    embeddings = encoder.encode(["a b", "one two three"])
    assert embeddings.shape == (2, encoder.hidden_size)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    text = "one two three four five six seven"
    assert encoder.tokenize([text])["input_ids"][0].tolist() == encoder.tokenizer(text)["input_ids"][-4:]


def _without_pad_token(load):
    def wrapped(name):
        tokenizer = load(name)
        tokenizer.pad_token = None
        return tokenizer

    return wrapped


# ---- data ------------------------------------------------------------------------------------------------------


def test_datamodule_batches_are_text_and_train_order_is_seeded():
    records = marker_pairs(10)
    records[0] = PreferenceRecord(
        id="multi", prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": "bye"}],
        chosen="a", rejected="b", domain="toy", source="memory",
    )  # fmt: skip
    orders = []
    for _ in range(2):
        data = PreferenceDataModule(train=[ListSource(records)], batch_size=4, seed=3)
        data.setup("fit")
        data.setup("fit")  # idempotent
        batches = list(data.train_dataloader())
        orders.append([row for batch in batches for row in batch["id"]])
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(record.id for record in records)
    assert orders[0] != [record.id for record in records]
    assert set(batches[0]) == {"id", "prompt", "chosen", "rejected", "domain"}
    rows = {row_id: prompt for batch in batches for row_id, prompt in zip(batch["id"], batch["prompt"], strict=True)}
    assert rows["multi"] == "User: hi\n\nAssistant: hello\n\nUser: bye"
    assert rows["toy-1"] == "question 1: Janet sells eggs?"
    assert data.val_dataloader() == []


# ---- module, checkpoint, RM ------------------------------------------------------------------------------------


def test_frozen_encoder_module_learns_a_separable_preference(tiny_encoder_dir, tmp_path):
    module = make_module(tiny_encoder_dir)
    encoder_before = {key: value.clone() for key, value in module.encoder.state_dict().items()}
    trainer = fit(module, tmp_path, max_epochs=6, enable_checkpointing=False)
    assert trainer.callback_metrics["val/pair_acc"].item() > 0.9
    assert {"train/loss", "train/pair_acc", "val/loss", "val/pair_acc"} <= set(trainer.callback_metrics)
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), f"frozen encoder weight {key} changed"
    module.train()
    assert module.head.training and not module.encoder.training
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.head.parameters()}


def test_trainable_encoder_is_in_train_mode_and_optimized(tiny_encoder_dir):
    module = make_module(tiny_encoder_dir, freeze_encoder=False)
    assert module.encoder.training and all(p.requires_grad for p in module.encoder.parameters())


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_checkpoint_serves_as_reward_model(tiny_encoder_dir, tmp_path, freeze_encoder):
    module = make_module(tiny_encoder_dir, freeze_encoder=freeze_encoder)
    checkpoint_dir = tmp_path / "learned_rm" / "toy"
    fit(module, tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=checkpoint_dir, save_last=True)])
    path = checkpoint_dir / "last.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    trained = module.head if freeze_encoder else module
    # a frozen run saves and optimizes the head alone; a fine-tuning run saves and optimizes everything
    assert any(key.startswith("encoder.") for key in saved["state_dict"]) is not freeze_encoder
    assert len(saved["optimizer_states"][0]["param_groups"][0]["params"]) == len(list(trained.parameters()))

    rm = LearnedRewardModel(name="learned-toy", checkpoint=str(path), batch_size=3)
    records = marker_pairs(7)
    prompts, responses = [r.prompt for r in records], [r.chosen for r in records]
    module.eval()
    with torch.no_grad():
        expected = module.reward(prompts, responses)
    torch.testing.assert_close(rm.score(prompts, responses), expected)
    assert compose_text(prompts[0], "x") == "question 0: Mix flour and water?\n\nAssistant: x"


def test_learned_rms_on_one_frozen_encoder_run_it_once_per_batch_and_score_as_alone(
    tiny_learned_checkpoint, monkeypatch
):
    first = LearnedRewardModel(name="first", checkpoint=tiny_learned_checkpoint, batch_size=3)
    second = LearnedRewardModel(name="second", checkpoint=tiny_learned_checkpoint, batch_size=3)
    with torch.no_grad():
        second.module.head[-1].bias.add_(1.0)  # another head on the same encoder
    passes = []
    encode_batch = TextEncoder._encode_batch
    monkeypatch.setattr(
        TextEncoder, "_encode_batch", lambda self, texts: passes.append(len(texts)) or encode_batch(self, texts)
    )
    records = marker_pairs(7)
    prompts, responses = [r.prompt for r in records], [r.chosen for r in records]
    scores = [rm.score(prompts, responses) for rm in (first, second)]
    assert sum(passes) == 7  # the second RM reused the first's embeddings
    for rm, score in zip((first, second), scores, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(score, rm.module.reward(prompts, responses))
    assert not torch.allclose(scores[0], scores[1])
    passes.clear()
    first.score(prompts, [r.rejected for r in records])  # other texts: the encoder runs again
    second.module.freeze_encoder = False  # a fine-tuned encoder is its own function: never shared
    second.score(prompts, [r.rejected for r in records])
    assert sum(passes) == 14


def test_checkpoint_with_other_encoder_weights_is_refused(tiny_encoder_dir, tmp_path):
    module = make_module(tiny_encoder_dir)
    checkpoint = {"state_dict": {"head.0.weight": torch.zeros(1)}, "frozen_encoder_fingerprint": 1.0}
    with pytest.raises(RuntimeError, match="retrain the head"):
        module.on_load_checkpoint(checkpoint)


def test_missing_checkpoint_names_path_and_command(tmp_path):
    path = tmp_path / "checkpoints" / "learned_rm" / "safety" / "best.ckpt"
    with pytest.raises(FileNotFoundError) as error:
        LearnedRewardModel(name="learned-safety", checkpoint=str(path))
    assert str(path) in str(error.value)
    assert "python cli.py fit --config configs/learned_rm/safety.yaml" in str(error.value)


# ---- the shipped config ----------------------------------------------------------------------------------------


def test_safety_config_fast_dev_run(tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative output paths land in tmp_path
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # LightningCLI warns when pytest's own arguments are present
    config = yaml.safe_load(SAFETY_CONFIG.read_text())
    for side in ("train", "val"):
        for source in config["data"]["init_args"][side]:
            source["init_args"]["limit"] = 4
    override = tmp_path / "limited.yaml"
    override.write_text(yaml.safe_dump({"data": config["data"]}))
    cli_main(
        ["fit", "--config", str(SAFETY_CONFIG), "--config", str(override), "--model.init_args.encoder",
         tiny_encoder_dir, "--trainer.fast_dev_run", "true"]
    )  # fmt: skip


def test_resume_restores_the_head_from_a_head_only_checkpoint(tiny_encoder_dir, tmp_path):
    first = make_module(tiny_encoder_dir)
    fit(first, tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    second = make_module(tiny_encoder_dir)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = PreferenceDataModule(train=[ListSource(marker_pairs(8))], batch_size=8)
    trainer.fit(second, datamodule=data, ckpt_path=tmp_path / "last.ckpt")  # already at max_epochs: restores only
    assert trainer.global_step == 5  # 40 pairs / batch 8, from the first fit
    for key, value in first.head.state_dict().items():
        torch.testing.assert_close(second.head.state_dict()[key], value)
