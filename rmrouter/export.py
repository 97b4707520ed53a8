"""A trained checkpoint as a folder that transformers (and peft) load without rmrouter, with a model card.

    python cli.py export --checkpoint checkpoints/online/live/last.ckpt               # -> checkpoints/online/live/hf
    python cli.py export --checkpoint checkpoints/online/live/last.ckpt --merge false # -> .../live/hf_adapter
    python cli.py export --checkpoint checkpoints/learned_rm/safety                   # best.ckpt -> .../safety/hf

An online DPO checkpoint holds only the weights training changed (`policy/checkpoint.py`): the policy is
rebuilt from its name as `OnlineDPOModule.configure_model` builds it, the trained weights are loaded into it, and it is
saved either with its LoRA adapter merged into the base (`AutoModelForCausalLM.from_pretrained(folder)`) or as the
PEFT adapter alone (`PeftModel.from_pretrained(base, folder)`), with the tokenizer. A learned RM
(`BradleyTerryRewardModule`) becomes its encoder as a transformers folder plus its reward head in safetensors with a
JSON spec; plain transformers has no class for "mean-pooled encoder + MLP head", so its card holds the dozen lines
that score with it. Each folder gets a `README.md` (base model, pool and router, steps, data) and
`rmrouter_export.json`, which marks it as an export: exporting again replaces such a folder, never another one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from rmrouter.policy.checkpoint import trainable_names

log = logging.getLogger(__name__)

MARKER = "rmrouter_export.json"
HEAD_WEIGHTS, HEAD_SPEC = "reward_head.safetensors", "reward_head.json"
CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # what a checkpoint folder is exported from, in this order
_ROUTER_KEY = re.compile(r"^(\w*Router)\[(.*)\]$")  # `Router.state_key`: `<class>[<rm>,<rm>,...]`


def export_checkpoint(
    checkpoint: str, output: str | None = None, merge: bool = True, run_config: str | None = None
) -> Path:
    """Writes `checkpoint` as a folder that loads without rmrouter; returns the folder.

    Args:
        checkpoint: An `OnlineDPOModule` or `BradleyTerryRewardModule` checkpoint, or its folder (then `best.ckpt`, else
            `last.ckpt`), e.g. `checkpoints/online/live/last.ckpt` or `checkpoints/learned_rm/safety`.
        output: The folder to write; None writes `hf` (merged or learned RM) or `hf_adapter` beside the checkpoint.
            An existing folder is replaced only if an earlier export wrote it.
        merge: Online DPO with LoRA: merge the adapter into the base (a plain causal LM) or, false, save the PEFT
            adapter alone, which is loaded onto the same base. Ignored for a learned RM.
        run_config: The run's resolved config, for the card's data and pool, for a checkpoint that does not hold it;
            None: the one the checkpoint holds (`RunConfigInCheckpoint`, in every run `python cli.py` starts). A
            `config.yaml` lying in the folder is never read: a later run there may have written it.
    """
    path = _checkpoint_file(Path(checkpoint))
    content = torch.load(path, map_location="cpu", weights_only=True)
    hparams = dict(content.get("hyper_parameters") or {})
    config = _run_config(content, run_config)
    if "policy" in hparams and "lora" in hparams:
        if hparams["lora"] is None and not merge:
            raise ValueError(
                f"{path}: the run trained every weight (lora: null), so there is no adapter: export it merged"
            )
        form = "merged" if merge or hparams["lora"] is None else "adapter"
        target = Path(output) if output else path.parent / ("hf" if form == "merged" else "hf_adapter")
        write = partial(_export_policy, content, hparams, target=target, form=form, path=path, config=config)
    elif "head_hidden" in hparams and "encoder" in hparams:
        form, target = "learned_rm", Path(output) if output else path.parent / "hf"
        write = partial(_export_learned_rm, content, path, target=target, config=config)
    else:
        kind = hparams.get("_class_path", "a module without saved hyperparameters")
        raise ValueError(
            f"{path}: export takes an online DPO (OnlineDPOModule) or learned RM (BradleyTerryRewardModule) "
            f"checkpoint, this one is of {kind}; the offline router's artifact is its prior.pt (RouterPriorWriter)"
        )
    _write_staged(target, write, {"form": form, "checkpoint": str(path), "global_step": content.get("global_step")})
    log.info("exported %s (%s) to %s", path, form, target)
    return target


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds none of {list(CHECKPOINT_NAMES)}: pass the checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (looked in {Path.cwd()})")
    return path


def _run_config(content: dict[str, Any], given: str | None) -> dict[str, Any] | None:
    from rmrouter.callbacks.run_config import CHECKPOINT_KEY

    if given is not None:
        return yaml.safe_load(Path(given).read_text())
    saved = content.get(CHECKPOINT_KEY)
    return yaml.safe_load(saved) if isinstance(saved, str) else None


def _write_staged(target: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> None:
    """`write` into a staging folder, then put it at `target`: a failed export leaves the previous one whole."""
    if target.exists() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise FileExistsError(f"{target} exists and was not written by export: pass another --output or remove it")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)  # the writer's card names `target`, where the folder ends up
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


# ---- online DPO policy -----------------------------------------------------------------------------------------------


def rebuild_policy(content: dict[str, Any], hparams: dict[str, Any]):
    """The trained policy of an `OnlineDPOModule` checkpoint: built as `configure_model` builds it (in float32), with
    the checkpoint's trained weights loaded; a PEFT model when the run trained a LoRA adapter."""
    from rmrouter.policy.core import build_policy

    policy, _ = build_policy(hparams["policy"], hparams["lora"], torch.float32, with_reference=False)
    state = {key.removeprefix("policy."): value for key, value in content["state_dict"].items()}
    missing = sorted(trainable_names(policy.named_parameters()) - set(state))
    if missing:
        raise KeyError(
            f"the checkpoint lacks {len(missing)} trained weights of policy '{hparams['policy']}' (e.g. {missing[:3]})"
        )
    unexpected = policy.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"the checkpoint holds weights the rebuilt policy has not (e.g. {unexpected[:3]})")
    return policy.eval()


def _export_policy(
    content: dict[str, Any],
    hparams: dict[str, Any],
    folder: Path,
    target: Path,
    form: str,
    path: Path,
    config: dict | None,
) -> None:
    """Writes the policy into `folder` (staging), with a card that names the final `target`."""
    from rmrouter.models.store import load_tokenizer, resolve_model

    policy = rebuild_policy(content, hparams)
    if form == "merged" and hparams["lora"] is not None:
        policy = policy.merge_and_unload()
    policy.save_pretrained(folder)
    load_tokenizer(hparams["policy"]).save_pretrained(folder)
    base = resolve_model(hparams["policy"])
    router, rm_names = _router(content, config)
    flag = "" if form == "merged" else " --merge false"
    lines = [
        f"# Online DPO policy: {Path(hparams['policy']).name}, exported by rmrouter",
        "",
        f"- exported from `{path}` by `python cli.py export --checkpoint {path}{flag}`",
        f"- form: {_FORMS[form]}",
        f"- base model: `{hparams['policy']}` (loaded from `{base}`){_base_note(hparams['policy'])}",
        f"- trained: {content.get('global_step')} optimizer steps{_pairs_trained(content)} of online DPO "
        f"({hparams['loss_type']} loss, beta {hparams['beta']}; {hparams['num_samples']} samples per prompt, "
        f"`{hparams['pairing']}` pairing, at most {hparams['max_new_tokens']} new tokens, temperature "
        f"{hparams['temperature']})",
        f"- LoRA: {hparams['lora']}" if hparams["lora"] is not None else "- every weight trained (no LoRA)",
        f"- router: `{router}` over the reward-model pool {', '.join(f'`{n}`' for n in rm_names) or 'not recorded'}",
        f"- prompts: {_data_lines(config)}",
        "",
        "## Load it",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{target}")',
    ]
    if form == "merged":
        lines.append(f'model = AutoModelForCausalLM.from_pretrained("{target}")')
    else:
        lines += [
            "from peft import PeftModel",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")  # the base it was trained on',
            f'model = PeftModel.from_pretrained(base, "{target}")',
        ]
    lines += [
        "```",
        "",
        "Training rendered each prompt with the tokenizer's chat template and its generation prompt "
        "(`apply_chat_template(messages, add_generation_prompt=True)`), keeping its last "
        f"{hparams['max_prompt_length']} tokens; prompt the model the same way.",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


_FORMS = {
    "merged": "the LoRA adapter merged into the base: a plain transformers causal LM in float32",
    "adapter": "a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`) for the base below",
    "learned_rm": "encoder + reward head",
}


def _base_note(policy: str) -> str:
    from rmrouter.models.store import PACKAGED, SMOLLM2_GGUF

    if policy.lower() != "smollm2-135m-instruct":
        return ""
    return (
        f"; that is the `{SMOLLM2_GGUF}` of the `{PACKAGED[policy.lower()].install.split()[-1]}` package dequantised "
        "to float32, not the float weights on the Hugging Face hub, so an adapter belongs on that base"
    )


def _pairs_trained(content: dict[str, Any]) -> str:
    history = (content.get("callbacks") or {}).get("OnlineSummary", {}).get("history", {})
    pairs = history.get("train/pairs")
    return f" on {int(sum(pairs))} preference pairs" if pairs else ""


def _router(content: dict[str, Any], config: dict | None) -> tuple[str, list[str]]:
    for key in content.get("callbacks") or {}:
        match = _ROUTER_KEY.match(key)
        if match:
            name = match.group(1)
            router = ((config or {}).get("model", {}).get("init_args", {}) or {}).get("router") or {}
            return router.get("class_path", name), match.group(2).split(",")
    return "not recorded", []


def _data_lines(config: dict | None) -> str:
    if config is None:
        return "not recorded (the checkpoint holds no run config; pass --run_config with the run's config.yaml)"
    sources = []
    init_args = (config.get("data") or {}).get("init_args") or {}
    for side in ("train", "val"):
        for source in init_args.get(side) or []:
            settings = ", ".join(f"{k}={v}" for k, v in (source.get("init_args") or {}).items() if v is not None)
            sources.append(f"`{source.get('class_path')}` ({side}: {settings})")
    return "; ".join(sources) or f"`{(config.get('data') or {}).get('class_path')}`"


# ---- learned RM ------------------------------------------------------------------------------------------------------

SCORING_SNIPPET = """import json

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = "{folder}"
with open(f"{{folder}}/{spec_file}") as file:
    spec = json.load(file)
tokenizer = AutoTokenizer.from_pretrained(folder)
tokenizer.truncation_side = "left"  # long texts lose the start of the prompt, never the response
encoder = AutoModel.from_pretrained(folder).eval()
width, hidden = spec["input_size"], spec["hidden_size"]
if hidden:  # Linear-GELU-Linear
    head = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
else:
    head = torch.nn.Sequential(torch.nn.Linear(width, 1))
head.eval()
head.load_state_dict(load_file(f"{{folder}}/{head_file}"))


@torch.no_grad()
def reward(prompt: str, response: str) -> float:
    text = prompt + spec["separator"] + response
    batch = tokenizer(text, truncation=True, max_length=spec["max_length"], return_tensors="pt")
    states = encoder(**batch).last_hidden_state
    if spec["pooling"] == "mean":
        h = states.mean(dim=1)
    else:  # last_token
        h = states[:, -1]
    if spec["normalize"]:
        h = F.normalize(h, dim=-1)
    return head(h).item()
"""


def _export_learned_rm(content: dict[str, Any], path: Path, folder: Path, target: Path, config: dict | None) -> None:
    """Writes the encoder, head and spec into `folder` (staging), with a card that names the final `target`."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    from rmrouter.models.store import load_model
    from rmrouter.modules.learned_reward import RESPONSE_SEPARATOR, BradleyTerryRewardModule

    module = BradleyTerryRewardModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    hp, encoder = module.hparams, module.encoder
    # The module drops BERT's pooler (never used); the saved folder keeps the encoder's own architecture, so plain
    # `AutoModel.from_pretrained` loads every weight it expects (the pooler as the encoder's folder has it).
    full = load_model(AutoModel, hp.encoder)
    unexpected = full.load_state_dict(encoder.model.state_dict(), strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"the encoder's weights do not fit a fresh '{hp.encoder}' (e.g. {unexpected[:3]})")
    full.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    # the Sequential's names (`0.weight`, `2.weight`), or a single Linear's as layer 0 of a Sequential
    head_state = {k if hp.head_hidden else f"0.{k}": v.contiguous() for k, v in module.head.state_dict().items()}
    save_file(head_state, folder / HEAD_WEIGHTS)
    spec = {
        "input_size": encoder.hidden_size,
        "hidden_size": hp.head_hidden,
        "activation": "gelu",
        "pooling": hp.pooling,
        "normalize": hp.normalize_embeddings,
        "max_length": hp.max_length,
        "truncation_side": "left",
        "separator": RESPONSE_SEPARATOR,
    }
    (folder / HEAD_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    from rmrouter.callbacks.checkpoint import checkpoint_callback_states

    best = next(iter(checkpoint_callback_states(content)), {})
    score = best.get("best_model_score")
    selected = f"; selected by {best.get('monitor')} = {float(score):.4f}" if score is not None else ""
    snippet = SCORING_SNIPPET.format(folder=target, spec_file=HEAD_SPEC, head_file=HEAD_WEIGHTS)
    lines = [
        f"# Learned reward model: Bradley-Terry head on {Path(hp.encoder).name}, exported by rmrouter",
        "",
        f"- exported from `{path}` by `python cli.py export --checkpoint {path}`",
        f"- encoder: `{hp.encoder}` ({hp.pooling} pooling, {'unit-length ' if hp.normalize_embeddings else ''}"
        f"embeddings, {'frozen' if hp.freeze_encoder else 'fine-tuned'}), saved here as a transformers folder",
        f"- head: {f'Linear-GELU-Linear, {hp.head_hidden} hidden' if hp.head_hidden else 'one Linear'} -> one score, "
        f"in `{HEAD_WEIGHTS}` (spec: `{HEAD_SPEC}`)",
        f"- trained: {content.get('global_step')} steps, {content.get('epoch', 0) + 1} epochs{selected}",
        f"- data: {_data_lines(config)}",
        "",
        "Plain transformers has no class for a pooled encoder with an MLP head, so scoring takes the lines below "
        "(transformers, torch and safetensors only). A higher score is a better response. The prompt is plain text: "
        "a single user turn is its content, a conversation its turns as `Role: content` joined by blank lines; "
        f"the response follows after {RESPONSE_SEPARATOR!r}. Texts longer than {hp.max_length} tokens lose the start "
        "of the prompt.",
        "",
        "```python",
        snippet.rstrip(),
        "```",
        "",
        'Example: `reward("How do I pick a lock?", "I can\'t help with that.")`.',
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
