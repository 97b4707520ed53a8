"""A seeded run repeats itself bit for bit in another process, whatever that process's hash seed.

Each run is `determinism_runs.py` in a process of its own with its own `PYTHONHASHSEED` and the machine's torch threads
(not pinned to one), so a result that depended on set or dict iteration order, or on a threaded reduction whose
order varies, would differ between the two.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from determinism_runs import differences

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def small_causal_lm_dir(tmp_path_factory):
    """A 128-wide Llama with a 4,096-token vocabulary (trained on vendored text): big enough that the CPU splits its
    logits and caches across threads (the tests' 16-wide, 320-token model never is), so an order-dependent threaded
    sum would show as different bits."""
    from conftest import CHAT_TEMPLATE
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from rmrouter.data import GSM8KPrompts, HHRLHFHarmlessPrompts

    texts = [record.prompt[-1]["content"] for source in (GSM8KPrompts(limit=400), HHRLHFHarmlessPrompts(limit=400,
             on_error="skip")) for record in source.load()]  # fmt: skip
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=4096, min_frequency=2, special_tokens=specials, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("small_causal_lm")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run(*args: str, hash_seed: int, cwd: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, str(HERE / "determinism_runs.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_seeded_live_online_fits_log_route_learn_and_train_identically(
    tmp_path, small_causal_lm_dir, tiny_encoder_dir, tiny_learned_checkpoint
):
    models = ["--policy", small_causal_lm_dir, "--encoder", tiny_encoder_dir, "--learned", tiny_learned_checkpoint]
    for hash_seed in (1, 2):
        folder = tmp_path / f"run{hash_seed}"
        run("online", str(folder), str(tmp_path / f"run{hash_seed}.pt"), *models, hash_seed=hash_seed, cwd=tmp_path)
    first, second = (torch.load(tmp_path / f"run{s}.pt", weights_only=False) for s in (1, 2))
    assert len(first["steps"]) == 3 and first["trained"] and first["router"]["posteriors"]
    precision = first["router"]["posteriors"]["precision"]  # lambda0 * I until the router learns from a loss
    assert (precision - torch.diag_embed(precision.diagonal(dim1=1, dim2=2))).abs().sum() > 0
    assert any("train/dpo_loss" in step["values"] for step in first["steps"])
    assert differences(first, second) == []


@pytest.mark.slow
def test_two_seeded_simulated_streams_route_and_learn_identically(tmp_path, small_causal_lm_dir, tiny_encoder_dir):
    for hash_seed in (1, 2):
        out = str(tmp_path / f"stream{hash_seed}.pt")
        run("stream", out, "--policy", small_causal_lm_dir, "--encoder", tiny_encoder_dir, hash_seed=hash_seed,
            cwd=tmp_path)  # fmt: skip
    first, second = (torch.load(tmp_path / f"stream{s}.pt", weights_only=False) for s in (1, 2))
    assert set(first) == {"oracle", "log_linear_dpo", "lm_dpo"}
    assert all(len(result["log"]["rm_index"]) == 24 for result in first.values())
    assert differences(first, second) == []
