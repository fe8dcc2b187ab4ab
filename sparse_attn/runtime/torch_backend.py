"""PyTorch backend of :class:`sparse_attn.runtime.Runtime`: the reference side of every check.

The eager model is rebuilt from the model's metadata with
``sparse_attn.export.build_torch_model(metadata)`` (owned by the export part): the same
weights, pattern and configuration as the exported file, run by PyTorch. Its ``forward`` takes
the model's inputs as keyword tensors and returns a dict output name -> tensor.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnError, UnsupportedEnvironmentError
from sparse_attn.opspec import META_PREFIX
from sparse_attn.runtime.validation import TensorSpec, specs_from_json

NAME = "torch"


class TorchBackend:
    """Eager PyTorch model rebuilt from ``sparse_attn.*`` metadata.

    Args:
        metadata: the model's metadata (``sparse_attn.model``, ``sparse_attn.model_config``,
            ``sparse_attn.inputs``, ``sparse_attn.outputs`` are required).
        device: torch device to run on (default ``"cpu"``).

    Raises:
        InvalidInputError: if the metadata lacks what is needed to rebuild the model.
        UnsupportedEnvironmentError: if the export package cannot be imported.
    """

    name = NAME

    def __init__(self, metadata: dict, device: str = "cpu") -> None:
        needed = [f"{META_PREFIX}{k}" for k in ("model", "model_config", "inputs")]
        missing = [k for k in needed if not metadata.get(k)]
        if missing:
            raise InvalidInputError(
                f"the model has no {missing} metadata, so the PyTorch reference cannot be "
                "rebuilt; re-export it with `sparse-attn export`"
            )
        try:
            from sparse_attn.export import build_torch_model
        except ImportError as exc:
            raise UnsupportedEnvironmentError(
                f"sparse_attn.export.build_torch_model is unavailable ({exc})"
            ) from exc
        import torch

        self._torch = torch
        self.device = torch.device(device)
        try:
            model = build_torch_model(dict(metadata))
        except SparseAttnError:
            raise
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(
                f"cannot rebuild the PyTorch model from the metadata: {exc}"
            ) from exc
        self.model = model.eval().to(self.device)
        self.metadata = dict(metadata)
        self.inputs: list[TensorSpec] = specs_from_json(metadata[f"{META_PREFIX}inputs"]) or []
        outs = specs_from_json(metadata.get(f"{META_PREFIX}outputs"))
        self.outputs: list[TensorSpec] = outs or []
        # Eager modules are not documented as thread-safe; one forward at a time.
        self._lock = threading.Lock()

    @property
    def output_names(self) -> list[str]:
        """Output names (from metadata; after the first run, from the model's dict)."""
        return [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one validated request; returns output name -> numpy array (host)."""
        torch = self._torch
        tensors = {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()
        }
        with self._lock, torch.inference_mode():
            result = self.model(**tensors)
        if not isinstance(result, dict):
            raise SparseAttnError(
                f"build_torch_model returned a model whose forward gives {type(result).__name__}, "
                "not a dict output name -> tensor"
            )
        out = {k: v.detach().cpu().numpy() for k, v in result.items()}
        if self.outputs:
            order = [o.name for o in self.outputs if o.name in out]
            out = {k: out[k] for k in order + [k for k in out if k not in order]}
        return out

    def close(self) -> None:
        """Drop the model."""
        self.model = None
