"""`python cli.py export`: checkpoints as folders that plain transformers and peft load, giving the same outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from online_cli_helpers import RM_NAMES, run_online

from rmrouter.cli import main
from rmrouter.export import MARKER, export_checkpoint


@pytest.fixture(scope="module")
def online_run(tmp_path_factory, tiny_causal_lm_dir):
    """A 2-step live LoRA run of the shipped online config on the tiny Llama: `(folder, its last.ckpt, the module)`."""
    folder = tmp_path_factory.mktemp("online_export")
    cli = run_online(folder, tiny_causal_lm_dir)
    checkpoint = folder / "checkpoints" / "online" / "live" / "last.ckpt"
    assert checkpoint.is_file()
    return folder, checkpoint, cli.model


def token_ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "how do I bake bread?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "Mix flour"
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


def test_the_merged_export_is_a_plain_causal_lm_with_the_policys_logits(online_run, tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, checkpoint, module = online_run
    exported = export_checkpoint(str(checkpoint))
    assert exported == checkpoint.parent / "hf" and not (exported / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    ids = token_ids(tokenizer)
    assert torch.equal(ids, token_ids(module.tokenizer))  # the same tokenizer and chat template
    merged = logits_of(AutoModelForCausalLM.from_pretrained(exported), ids)
    torch.testing.assert_close(merged, logits_of(module.policy, ids), atol=1e-5, rtol=1e-5)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir), ids)
    assert (merged - base).abs().max() > 1e-3  # the adapter trained: the export is not the base


def test_the_adapter_export_loads_onto_its_base_with_peft(online_run, tiny_causal_lm_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder, checkpoint, module = online_run
    exported = export_checkpoint(str(checkpoint.parent), merge=False)  # a folder: its last.ckpt
    assert exported == checkpoint.parent / "hf_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in exported.iterdir()
    }
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_causal_lm_dir
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir), str(exported))
    ids = token_ids(module.tokenizer)
    torch.testing.assert_close(logits_of(model, ids), logits_of(module.policy, ids), atol=1e-5, rtol=1e-5)


def test_the_card_names_base_router_pool_steps_and_data(online_run, tiny_causal_lm_dir):
    folder, checkpoint, _ = online_run
    card = (export_checkpoint(str(checkpoint), output=str(folder / "card_check")) / "README.md").read_text()
    assert f"- base model: `{tiny_causal_lm_dir}`" in card
    assert "- trained: 2 optimizer steps on " in card and "beta 0.1" in card
    assert f"`rmrouter.routers.baseline_routers.RandomRouter` over the reward-model pool `{RM_NAMES[0]}`" in card
    assert "`rmrouter.data.GSM8KPrompts` (train: limit=2" in card  # from the run's config, saved in the checkpoint
    assert "AutoModelForCausalLM.from_pretrained(" in card


def test_the_card_describes_the_checkpoints_own_run_whatever_a_later_run_wrote_in_the_folder(online_run):
    from rmrouter.callbacks.run_config import CHECKPOINT_KEY

    folder, checkpoint, _ = online_run
    saved = torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY]
    assert "RandomRouter" in saved and "GSM8KPrompts" in saved  # the run's resolved config, as text
    later = checkpoint.parent / "tensorboard" / "config.yaml"  # as a later, failed run in this folder leaves it
    later.write_text(saved.replace("rmrouter.routers.baseline_routers.RandomRouter", "some.other.Router")
                     .replace("GSM8KPrompts", "OtherPrompts"))  # fmt: skip
    card = (export_checkpoint(str(checkpoint), output=str(folder / "card_later")) / "README.md").read_text()
    assert "`rmrouter.routers.baseline_routers.RandomRouter`" in card and "some.other.Router" not in card
    assert "`rmrouter.data.GSM8KPrompts`" in card and "OtherPrompts" not in card


def test_export_replaces_its_own_folder_and_no_other(online_run, tmp_path):
    folder, checkpoint, _ = online_run
    target = tmp_path / "out"
    export_checkpoint(str(checkpoint), output=str(target))
    (target / "stale.txt").write_text("from an older export")
    export_checkpoint(str(checkpoint), output=str(target))
    assert (target / MARKER).is_file() and not (target / "stale.txt").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by export"):
        export_checkpoint(str(checkpoint), output=str(other))
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_full_finetune_checkpoint_exports_every_weight(online_run, tmp_path, tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM

    _, checkpoint, _ = online_run
    content = torch.load(checkpoint, weights_only=True)
    torch.manual_seed(1)
    trained = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    content["hyper_parameters"]["lora"] = None
    content["state_dict"] = {f"policy.{name}": p.detach() for name, p in trained.named_parameters()}
    full = tmp_path / "full.ckpt"
    torch.save(content, full)
    with pytest.raises(ValueError, match="no adapter"):
        export_checkpoint(str(full), merge=False)
    exported = export_checkpoint(str(full), output=str(tmp_path / "full"))
    ids = torch.tensor([[1, 5, 9, 20]])
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(exported), ids), logits_of(trained, ids))


def test_a_learned_rm_exports_to_an_encoder_and_head_that_the_cards_code_scores_with(tiny_learned_checkpoint, tmp_path):
    from rmrouter.modules.learned_reward import BradleyTerryRewardModule

    target = tmp_path / "rm"
    main(["export", "--checkpoint", tiny_learned_checkpoint, "--output", str(target)])
    card = (target / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    assert "rmrouter" not in snippet  # transformers, torch and safetensors only
    scope: dict = {}
    exec(compile(snippet, "card", "exec"), scope)  # the card's code, as a user would run it
    module = BradleyTerryRewardModule.load_from_checkpoint(tiny_learned_checkpoint, weights_only=True).eval()
    prompts = ["q1", "Human: hi\n\nAssistant: hello\n\nHuman: and now?"]
    responses = ["kind answer", "a much longer and rude answer " * 8]  # the second is cut from the left
    with torch.no_grad():
        expected = module.reward([[{"role": "user", "content": p}] for p in prompts], responses)
    got = torch.tensor([scope["reward"](p, r) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert "- trained: 1 steps" in card and f"`{Path(tiny_learned_checkpoint)}`" in card


def test_export_refuses_a_checkpoint_of_another_module(tmp_path):
    path = tmp_path / "router.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "rmrouter.modules.offline_router.OfflineRouterModule"}}, path)
    with pytest.raises(ValueError, match="OfflineRouterModule.*prior.pt"):
        export_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="holds none of"):
        export_checkpoint(str(tmp_path))
