"""The router prior file: round trip, safe loading, versions, pool checks, shapes and atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rmrouter.routers import FORMAT_VERSION, RouterPrior, RouterPriorError

RM_NAMES = ["verifier", "length", "safety"]


def make_prior(**overrides) -> RouterPrior:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.LayerNorm(6), nn.Linear(6, 4))
    fields = {
        "rm_names": RM_NAMES,
        "bt_embeddings": F.normalize(torch.randn(3, 4), dim=-1),
        "encoder": "tiny-encoder",
        "pooling": "mean",
        "max_length": 64,
        "mlp_config": {"input_dim": 8, "hidden_dims": [6], "output_dim": 4, "activation": "relu", "layer_norm": True},
        "mlp_state": mlp.state_dict(),
        "metadata": {"behaviour": "default.jsonl", "steps": 100, "router_accuracy": 0.75},
    }
    return RouterPrior(**{**fields, **overrides})


def test_round_trip_keeps_every_field_and_loads_weights_only(tmp_path):
    prior = make_prior()
    path = prior.save(tmp_path / "priors" / "router.pt")
    loaded = RouterPrior.load(path)
    assert loaded.version == FORMAT_VERSION and loaded.source == str(path)
    assert loaded.rm_names == RM_NAMES and loaded.dim == 4
    assert torch.equal(loaded.bt_embeddings, prior.bt_embeddings)
    assert (loaded.encoder, loaded.pooling, loaded.max_length) == ("tiny-encoder", "mean", 64)
    assert loaded.mlp_config == prior.mlp_config and loaded.metadata == prior.metadata
    assert loaded.mlp_state.keys() == prior.mlp_state.keys()
    assert all(torch.equal(loaded.mlp_state[k], v) for k, v in prior.mlp_state.items())
    # Only plain containers, primitives and tensors in the file: the safe unpickler reads it directly.
    raw = torch.load(path, weights_only=True)
    assert type(raw) is dict and type(raw["mlp_state"]) is dict
    assert list(tmp_path.joinpath("priors").iterdir()) == [path]  # no temp file left behind


def test_non_primitive_config_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(RouterPriorError, match=r"mlp_config.activation is a ReLU"):
        make_prior(mlp_config={"activation": nn.ReLU()})
    with pytest.raises(RouterPriorError, match="metadata has key 1"):
        make_prior(metadata={1: "x"})


@pytest.mark.parametrize(("version", "expected"), [(FORMAT_VERSION + 1, "newer rmrouter"), (0, "unknown version")])
def test_other_format_versions_are_refused_naming_file_and_both_versions(tmp_path, version, expected):
    path = make_prior().save(tmp_path / "router.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": version}, path)
    with pytest.raises(RouterPriorError) as error:
        RouterPrior.load(path)
    message = str(error.value)
    assert str(path) in message and f"version {version}" in message and f"reads version {FORMAT_VERSION}" in message
    assert expected in message


def test_files_that_are_not_priors_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(RouterPriorError, match="not a router prior file"):
        RouterPrior.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(RouterPriorError, match="not a router prior file"):
        RouterPrior.load(path)
    with pytest.raises(FileNotFoundError, match="no router prior"):
        RouterPrior.load(tmp_path / "missing.pt")


def test_check_pool_accepts_the_same_order_only():
    prior = make_prior()
    prior.check_pool(list(RM_NAMES))
    with pytest.raises(RouterPriorError, match="another order") as error:
        prior.check_pool(["length", "verifier", "safety"])
    assert str(RM_NAMES) in str(error.value) and "['length', 'verifier', 'safety']" in str(error.value)


def test_check_pool_names_missing_and_extra_rms(tmp_path):
    prior = RouterPrior.load(make_prior().save(tmp_path / "router.pt"))
    with pytest.raises(RouterPriorError) as error:
        prior.check_pool(["verifier", "length", "judge"])
    message = str(error.value)
    assert str(tmp_path / "router.pt") in message
    assert "lacks ['safety']" in message and "no prior for ['judge']" in message


def test_shapes_are_validated_on_construction_and_load(tmp_path):
    with pytest.raises(RouterPriorError, match="2 rows .* 3 RMs"):
        make_prior(bt_embeddings=F.normalize(torch.randn(2, 4), dim=-1))
    with pytest.raises(RouterPriorError, match=r"float tensor \[N, d\]"):
        make_prior(bt_embeddings=torch.ones(3))
    with pytest.raises(RouterPriorError, match="L2-normalised"):
        make_prior(bt_embeddings=torch.randn(3, 4) * 3)
    path = make_prior().save(tmp_path / "router.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "rm_names": RM_NAMES[:2]}, path)
    with pytest.raises(RouterPriorError, match="3 rows .* 2 RMs") as error:
        RouterPrior.load(path)
    assert str(path) in str(error.value)


def test_failed_save_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    path = make_prior().save(tmp_path / "router.pt")
    before = path.read_bytes()

    def torn_save(obj, file):
        file.write(b"half a prior")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        make_prior(encoder="another").save(path)
    with pytest.raises(OSError, match="disk full"):
        make_prior().save(tmp_path / "new.pt")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.pt"]
