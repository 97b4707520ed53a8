"""The model store: local folders, missing folders and packages, unknown hub ids, all without a network."""

from __future__ import annotations

import pytest

from rmrouter.models import store
from rmrouter.models.store import ModelNotAvailable, PackagedModel, load_model, load_tokenizer, resolve_model


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode, also when pytest was not started with HF_HUB_OFFLINE=1 (it is read once at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_local_folder_resolves_to_itself_and_loads(tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM

    assert resolve_model(tiny_causal_lm_dir) == tiny_causal_lm_dir
    assert load_tokenizer(tiny_causal_lm_dir).chat_template
    model = load_model(AutoModelForCausalLM, tiny_causal_lm_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training


@pytest.mark.parametrize("path", ["/no/such/rmrouter/model", "./no-such-rmrouter-model", "~/no-such-rmrouter-model"])
def test_missing_local_folder_is_not_available(path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_model(path)


def test_missing_package_names_the_install_command(monkeypatch):
    install = "pip install rmrouter-no-such-package==1.0"
    monkeypatch.setitem(store.PACKAGED, "all-minilm-l6-v2", PackagedModel("rmrouter_no_such_package", install))
    with pytest.raises(ModelNotAvailable) as raised:
        resolve_model("all-minilm-l6-v2")
    assert f"`{install}`" in str(raised.value)


def test_unknown_hub_id_offline_names_the_id(offline):
    with pytest.raises(ModelNotAvailable, match="rmrouter-test/no-such-model"):
        load_tokenizer("rmrouter-test/no-such-model")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RMROUTER_CACHE", str(tmp_path / "cache"))
    assert store.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("RMROUTER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "xdg" / "rmrouter"


def test_packaged_smollm2_converts_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RMROUTER_CACHE", str(tmp_path))
    converted = []

    def fake_convert(gguf_path, target):
        converted.append(gguf_path.name)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(store, "_convert_gguf", fake_convert)
    folder = resolve_model("smollm2-135m-instruct")
    assert folder == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert converted == [store.SMOLLM2_GGUF]
    assert resolve_model("smollm2-135m-instruct") == folder and len(converted) == 1
