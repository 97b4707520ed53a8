"""Shared fixtures: tiny random-init models saved as ordinary HF folders, built once per test session.

They load through the same `rmrouter.models.store` path as real models (a local folder), so every RM and module is
tested end to end on CPU in milliseconds. Real packaged models appear only in tests marked `real_models`.
"""

from __future__ import annotations

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = $ % #",
    "Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day and makes 9 * 2 = 18 dollars. #### 18",
]


@pytest.fixture(autouse=True)
def own_embedding_cache(tmp_path, monkeypatch):
    """Each test its own on-disk embedding store (`rmrouter.models.embedding_store`), never another's or the user's."""
    monkeypatch.setenv("RMROUTER_EMBEDDING_CACHE", str(tmp_path / "embedding_cache"))


def build_tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    bpe.train_from_iterator(CORPUS * 4, vocab_size=320, min_frequency=1, special_tokens=specials, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def _save(model, tokenizer, folder):
    torch.manual_seed(0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )


def save_tiny_causal_lm(folder, tokenizer) -> str:
    """A 2-layer, 16-wide Llama causal LM with a chat template, saved in `folder` (also for `benchmarks/`)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return _save(LlamaForCausalLM(_llama_config(tokenizer)), tokenizer, folder)


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer, 16-wide Llama causal LM with a chat template."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_causal_lm"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer Llama sequence classifier with one output: the shape of RewardBench RMs."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_llama_config(tiny_tokenizer, num_labels=1))
    return _save(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_classifier"))


def save_tiny_encoder(folder, tokenizer) -> str:
    """A 2-layer, 16-wide BERT encoder saved in `folder` (also for `benchmarks/`)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(BertModel(config), tokenizer, folder)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer, 16-wide BERT encoder: stands in for all-MiniLM-L6-v2."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"), tiny_tokenizer)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available; everything else runs everywhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_learned_checkpoint(tmp_path_factory, tiny_encoder_dir):
    """A `BradleyTerryRewardModule` checkpoint on the tiny encoder, after one optimizer step."""
    from lightning.pytorch import Trainer

    from rmrouter.data.preference_datamodule import PreferenceDataModule
    from rmrouter.data.records import PreferenceRecord
    from rmrouter.data.sources import PreferenceSource
    from rmrouter.modules.learned_reward import BradleyTerryRewardModule

    class Pairs(PreferenceSource):
        def read(self):
            return [
                PreferenceRecord(f"t{i}", [{"role": "user", "content": f"q{i}"}], "kind answer", "rude", "toy", "mem")
                for i in range(4)
            ]

    module = BradleyTerryRewardModule(
        encoder=tiny_encoder_dir, pooling="mean", normalize_embeddings=True, max_length=32, freeze_encoder=True,
        head_hidden=8, learning_rate=1e-2, weight_decay=0.0,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_learned_rm")
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=folder,
    )  # fmt: skip
    trainer.fit(module, datamodule=PreferenceDataModule(train=[Pairs(path="unused")], batch_size=4))
    trainer.save_checkpoint(folder / "best.ckpt")
    return str(folder / "best.ckpt")


def write_toy_prior(path, encoder_dir: str):
    """A prior over the router tests' toy pairs (`router_helpers`) on the tiny encoder, saved at `path`: its BT
    embeddings point RM 0 along the pairs' mean `h` and RM 1 away from it (also for `benchmarks/`)."""
    import random

    import torch.nn.functional as F
    from router_helpers import RMS, make_pairs

    from rmrouter.models.pair_encoder import build_mlp
    from rmrouter.routers.embedding import LazyEmbedder
    from rmrouter.routers.prior import RouterPrior

    torch.manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    state = build_mlp(config).state_dict()
    fields = dict(encoder=encoder_dir, pooling="mean", max_length=64, mlp_config=config, mlp_state=state)
    embedder = LazyEmbedder(encoder_dir, "mean", 64, config, state)
    direction = F.normalize(embedder.pairs(make_pairs(random.Random(0), 64)).mean(dim=0).float(), dim=0)
    RouterPrior(RMS, torch.stack([direction, -direction]), **fields).save(path)
    return path


@pytest.fixture
def prior_path(tmp_path, tiny_encoder_dir):
    """A prior over the router tests' toy pairs (`router_helpers`): its BT embeddings point RM 0 along the pairs' mean
    `h` and RM 1 away from it."""
    return write_toy_prior(tmp_path / "prior.pt", tiny_encoder_dir)
