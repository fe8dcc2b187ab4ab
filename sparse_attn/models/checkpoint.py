"""Local Hugging Face checkpoints: resolve, check and load (safetensors only, no remote code).

A checkpoint is a directory with ``config.json``, ``*.safetensors`` weights (or a
``model.safetensors.index.json`` shard index) and, for text, ``tokenizer.json``. Nothing is
unpickled: a directory with only ``pytorch_model.bin`` / ``*.pt`` weights is refused, and so
is a config that asks for code from the checkpoint (``auto_map``). Built-in names
(:data:`BUILTIN`) resolve to directories this package provides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

#: Architectures checked end to end against the unmodified Hugging Face model (tests); any
#: other architecture whose attention goes through transformers' registry is accepted too.
VERIFIED_MODEL_TYPES = (
    "bert",
    "llama",
    "mistral",
    "qwen2",
    "gemma2",
    "gemma3_text",
    "modernbert",
    "cohere2",
)
#: Architectures with their own adapter (their attention bypasses the registry).
ADAPTER_MODEL_TYPES = {"longformer": "longformer", "big_bird": "bigbird"}
#: Pickle-based weight files that are never loaded.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def cache_dir() -> Path:
    """Where converted built-in models live: ``$SPARSE_ATTN_CACHE`` or ``~/.cache/sparse-attn``."""
    env = os.environ.get("SPARSE_ATTN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparse-attn"


def _minilm_dir() -> Path:
    from sparse_attn.export.minilm import minilm_files

    return minilm_files()


def _gemma3_dir() -> Path:
    from sparse_attn.models.gemma3 import model_dir

    return model_dir()


#: Built-in model names -> function returning the checkpoint directory.
BUILTIN = {"minilm": _minilm_dir, "gemma3-270m": _gemma3_dir}


def supported_message() -> str:
    """The list of architectures shown when one is refused."""
    return (
        f"supported: {', '.join(VERIFIED_MODEL_TYPES)} (verified), "
        f"{', '.join(ADAPTER_MODEL_TYPES)} (adapters), and other architectures whose attention "
        "goes through transformers' attention registry"
    )


def resolve(name_or_path) -> Path:
    """The checkpoint directory of a built-in name or a path.

    Raises:
        InvalidInputError: a path that does not exist or is not a directory.
        UnsupportedEnvironmentError: a built-in model whose files are not installed.
    """
    s = str(name_or_path)
    if s in BUILTIN and not Path(s).exists():
        return BUILTIN[s]()
    p = Path(s).expanduser()
    if not p.exists():
        raise InvalidInputError(
            f"model {s!r} is neither a built-in name ({', '.join(BUILTIN)}) nor an existing "
            "checkpoint directory; check the path"
        )
    if not p.is_dir():
        raise InvalidInputError(
            f"{s} is a file; --model takes a checkpoint directory (config.json, *.safetensors, "
            "tokenizer.json) or a built-in name"
        )
    return p


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory.

    Raises:
        InvalidInputError: no safetensors weights (a pickle-only checkpoint says so), or a
            shard index naming files that are missing.
    """
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidInputError(f"{index} is not a valid shard index: {exc}") from exc
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise InvalidInputError(f"{index} names missing shard(s) {missing[:3]}; copy them")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise InvalidInputError(
            f"{path} has only pickle weights ({', '.join(pickles[:3])}); sparse-attn loads "
            "safetensors only: convert them (e.g. save_pretrained(..., safe_serialization=True))"
        )
    raise InvalidInputError(
        f"{path} holds no weights (*.safetensors); pass a complete checkpoint directory"
    )


def load_config(path: Path):
    """The checkpoint's transformers config, after the safety checks.

    Raises:
        InvalidInputError: no/bad ``config.json``, a config that needs remote code, or a
            ``model_type`` transformers does not know.
    """
    from transformers import AutoConfig

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InvalidInputError(
            f"{path} has no config.json; pass a Hugging Face checkpoint directory"
        )
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{cfg_file} must hold a JSON object")
    if raw.get("auto_map"):
        raise InvalidInputError(
            f"{path} needs its own Python code (config.json has auto_map); sparse-attn never "
            "runs code from a checkpoint: use an architecture built into transformers"
        )
    model_type = raw.get("model_type")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"unsupported architecture {model_type!r} in {cfg_file} ({' '.join(str(exc).split())[:200]}); "
            + supported_message()
        ) from exc


def load_config_for(model_dir, model_cls, family: str):
    """Resolve a checkpoint directory and load its config, which must be ``model_cls``'s.

    Used by the adapters of architectures that bypass the attention registry; ``family`` is
    the adapter's name, as the error message gives it.

    Returns:
        ``(path, config)``.

    Raises:
        InvalidInputError: as :func:`resolve` and :func:`load_config`, or a checkpoint of
            another architecture.
    """
    path = resolve(model_dir)
    cfg = load_config(path)
    expected = model_cls.config_class.model_type
    if cfg.model_type != expected:
        raise InvalidInputError(
            f"{path} holds a {cfg.model_type!r} checkpoint, not {family}; use sparse-attn "
            "export --model PATH"
        )
    return path, cfg


def is_causal_lm(config) -> bool:
    """True when the checkpoint is exported as a causal LM (``logits``), else as an encoder."""
    from sparse_attn.models.layers import is_causal

    return is_causal(config)


def model_class(config):
    """The transformers auto class for the checkpoint: causal LM or base encoder model.

    Raises:
        InvalidInputError: an architecture transformers has no such class for.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    if is_causal_lm(config):
        if type(config) not in AutoModelForCausalLM._model_mapping:
            raise InvalidInputError(
                f"unsupported architecture {config.model_type!r}: transformers has no causal LM "
                f"class for it; {supported_message()}"
            )
        return AutoModelForCausalLM
    if type(config) not in AutoModel._model_mapping:
        raise InvalidInputError(
            f"unsupported architecture {config.model_type!r}; {supported_message()}"
        )
    return AutoModel


def load_model(path: Path, config=None, *, dtype: str = "float32"):
    """The unmodified transformers model of a checkpoint, eval mode, eager attention.

    Weights come from safetensors only; every weight of the model must be in the files
    (shapes are checked by transformers against the config; a missing tensor is refused
    rather than left at random initialisation).

    Raises:
        InvalidInputError: see :func:`weight_files`, :func:`load_config`, missing weights.
    """
    import torch

    from sparse_attn.export.hf_common import torch_dtype

    config = config if config is not None else load_config(path)
    model = load_pretrained(model_class(config), path, config)
    td = torch_dtype(dtype)
    return model.to(td) if td != torch.float32 else model


def load_pretrained(cls, path: Path, config=None, **kwargs):
    """``cls.from_pretrained(path)`` from safetensors only, eager attention, float32, eval,
    refusing missing or mis-shaped weights (``kwargs`` go to ``from_pretrained``).

    Raises:
        InvalidInputError: no safetensors weights, unreadable files, missing weights.
    """
    import torch

    weight_files(path)
    if config is not None:
        kwargs["config"] = config
    try:
        model, info = cls.from_pretrained(
            str(path),
            dtype=torch.float32,
            attn_implementation="eager",
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(
            f"cannot load the weights of {path}: {' '.join(str(exc).split())[:300]}"
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise InvalidInputError(
            f"{path}: the weights lack {len(missing)} tensor(s) the model needs "
            f"({', '.join(sorted(missing)[:4])}); use the checkpoint that belongs to this config"
        )
    bad = info.get("mismatched_keys") or []
    if bad:
        raise InvalidInputError(f"{path}: tensors with shapes that differ from config: {bad[:3]}")
    return model.eval()


def tokenizer_file(path: Path) -> Path | None:
    """``tokenizer.json`` of the checkpoint, or ``None``."""
    p = Path(path) / "tokenizer.json"
    return p if p.is_file() else None


def load_tokenizer(path: Path):
    """The checkpoint's ``tokenizers.Tokenizer`` (from ``tokenizer.json``), or ``None``.

    Raises:
        InvalidInputError: an unreadable ``tokenizer.json``.
    """
    f = tokenizer_file(path)
    if f is None:
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(f))
    except Exception as exc:  # tokenizers raises plain Exception
        raise InvalidInputError(f"cannot read {f}: {exc}") from exc


def load_checkpoint(name_or_path, *, dtype: str = "float32"):
    """Load a checkpoint directory or built-in model.

    Args:
        name_or_path: a directory or a built-in name (:data:`BUILTIN`).
        dtype: ``"float32"`` or ``"float16"``.

    Returns:
        ``(model, config, tokenizer)``: the unmodified transformers model (eval, eager
        attention), its config, and a ``tokenizers.Tokenizer`` (``None`` when the directory has
        no ``tokenizer.json``).

    Raises:
        InvalidInputError: a missing/incomplete directory, pickle-only weights, remote code,
            an unsupported architecture or weights that do not match the config.
        UnsupportedEnvironmentError: a built-in model that is not installed.
    """
    path = resolve(name_or_path)
    config = load_config(path)
    model = load_model(path, config, dtype=dtype)
    return model, config, load_tokenizer(path)


__all__ = [
    "BUILTIN",
    "UnsupportedEnvironmentError",
    "cache_dir",
    "load_checkpoint",
    "load_config",
    "load_model",
    "load_tokenizer",
    "resolve",
    "supported_message",
    "tokenizer_file",
    "weight_files",
]
