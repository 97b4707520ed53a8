"""The on-disk embedding store behind frozen encoders: later processes reuse what earlier ones embedded."""

from __future__ import annotations

import torch
from test_offline_router import make_module, toy_data, trainer

from rmrouter.models.embedding_store import (
    SHARDS_BEFORE_COMPACTING,
    EmbeddingCache,
    EmbeddingStore,
    embedding_cache_dir,
)


class CountingEmbedder:
    """A fixed function of the text that records how many texts it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        return torch.tensor([[float(len(text)), float(sum(map(ord, text)))] for text in texts]).reshape(-1, 2)


def test_a_second_cache_on_the_same_store_embeds_nothing_again(tmp_path):
    texts = ["a", "bb", "a", "ccc"]
    first_embed, second_embed = CountingEmbedder(), CountingEmbedder()
    first = EmbeddingCache(EmbeddingStore(tmp_path))
    expected = first.lookup(texts, first_embed)
    assert first_embed.calls == [3]  # distinct texts, once
    first.flush()
    second = EmbeddingCache(EmbeddingStore(tmp_path))
    torch.testing.assert_close(second.lookup(texts, second_embed), expected)
    assert second_embed.calls == []
    second.lookup(["new"], second_embed)
    assert second_embed.calls == [1] and "new" in second and "a" in second


def test_nothing_reaches_disk_before_a_flush_and_clear_flushes(tmp_path):
    store = EmbeddingStore(tmp_path)
    cache = EmbeddingCache(store)
    cache.lookup(["a", "b"], CountingEmbedder())
    assert store.shards() == []
    cache.clear()
    assert len(cache) == 0 and len(store.shards()) == 1 and len(store.load()) == 2


def test_many_shards_are_compacted_into_one_without_losing_any(tmp_path):
    store = EmbeddingStore(tmp_path)
    for i in range(SHARDS_BEFORE_COMPACTING + 1):
        store.save({f"key{i}": torch.full((2,), float(i))})
    (tmp_path / ".left-by-a-killed-process.partial").write_bytes(b"torn")
    loaded = store.load()
    assert sorted(loaded) == sorted(f"key{i}" for i in range(SHARDS_BEFORE_COMPACTING + 1))
    assert len(store.shards()) == 1
    assert torch.equal(store.load()["key3"], torch.full((2,), 3.0))


def test_the_store_folder_depends_on_everything_that_changes_the_embeddings(monkeypatch, tmp_path):
    monkeypatch.setenv("RMROUTER_EMBEDDING_CACHE", str(tmp_path))
    base = EmbeddingStore.for_encoder("all-minilm-l6-v2", "mean", 256, 1234.5).folder
    assert base.parent == embedding_cache_dir() == tmp_path
    others = [
        EmbeddingStore.for_encoder("other/model", "mean", 256, 1234.5),
        EmbeddingStore.for_encoder("all-minilm-l6-v2", "last_token", 256, 1234.5),
        EmbeddingStore.for_encoder("all-minilm-l6-v2", "mean", 128, 1234.5),
        EmbeddingStore.for_encoder("all-minilm-l6-v2", "mean", 256, 1234.6),
    ]
    assert len({base, *(store.folder for store in others)}) == 5


def test_offline_router_test_after_fit_reads_the_stored_embeddings(tiny_encoder_dir, tmp_path, monkeypatch):
    torch.manual_seed(0)
    fitted = make_module(tiny_encoder_dir)
    trainer(tmp_path, 1, enable_checkpointing=False).fit(fitted, datamodule=toy_data(batch_size=8))
    calls = []
    fresh = make_module(tiny_encoder_dir)  # a new process: an empty memory cache, the same store
    fresh.load_state_dict(fitted.state_dict())
    encode = fresh.pair_encoder.encoder.encode
    monkeypatch.setattr(fresh.pair_encoder.encoder, "encode", lambda texts: calls.append(len(texts)) or encode(texts))
    data = toy_data(batch_size=8)
    data.rows["test"] = data.rows["val"]  # texts the fit embedded
    run = trainer(tmp_path, 1, enable_checkpointing=False)
    stored = run.test(fresh, datamodule=data, verbose=False)[0]["test/router_acc"]
    assert calls == []
    fresh.pair_encoder.cache.clear()
    monkeypatch.setenv("RMROUTER_EMBEDDING_CACHE", str(tmp_path / "empty"))
    uncached = make_module(tiny_encoder_dir)
    uncached.load_state_dict(fitted.state_dict())
    assert uncached.pair_encoder.stores_embeddings
    assert run.test(uncached, datamodule=data, verbose=False)[0]["test/router_acc"] == stored
