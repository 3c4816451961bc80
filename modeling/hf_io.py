"""Reading and writing Hugging Face model directories as plain numpy arrays.

Shared by the T5 (``modeling/hf.py``) and ELECTRA (``modeling/hf_electra.py``) converters, so both
report bad checkpoints the same way: ``HFConversionError`` naming the tensor (or file) and the
expected vs found shape. Nothing here knows a model family.

Weights files understood, in order of preference:
``model.safetensors``, ``model.safetensors.index.json`` (sharded), ``pytorch_model.bin``,
``pytorch_model.bin.index.json`` (sharded). Safetensors files go through ``safetensors.numpy``
(bfloat16 arrives as ``ml_dtypes.bfloat16``, so bfloat16 checkpoints load without torch; checked
with safetensors 0.8); ``.bin`` files need torch, imported lazily.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"

class HFConversionError(ValueError):
    """A Hugging Face directory that cannot be converted (missing file/tensor, wrong shape...)."""


# ---------------------------------------------------------------------------------------------
# Low-level file readers: each returns {name: np.ndarray}.
# ---------------------------------------------------------------------------------------------
def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError) as e:
        raise HFConversionError(f"{path}: not a readable safetensors file ({e})") from e


def _read_bin(path: str) -> dict[str, np.ndarray]:
    import torch  # lazily: only .bin checkpoints need it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / non-pickle files
        raise HFConversionError(f"{path}: cannot be read by torch.load ({e})") from e
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = tensor.detach().cpu().numpy()
    return out


def _read_index(path: str, reader) -> dict[str, np.ndarray]:
    with open(path) as f:
        index = json.load(f)
    if "weight_map" not in index:
        raise HFConversionError(f"{path}: index file has no 'weight_map'")
    directory = os.path.dirname(path)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise HFConversionError(f"{path}: shard {shard!r} listed in the index is missing")
        out.update(reader(shard_path))
    return out


# ---------------------------------------------------------------------------------------------
# The reader handed to converters.
# ---------------------------------------------------------------------------------------------
class TensorReader:
    """Hands out named tensors with shape checks and remembers which ones were taken.

    A converter ``take``s every tensor it maps, then calls ``unused()``: anything left over means
    the checkpoint has weights the converter does not understand, which must not pass silently.
    """

    def __init__(self, tensors: dict[str, np.ndarray], source: str = "<memory>"):
        self._tensors = dict(tensors)
        self._used: set[str] = set()
        self.source = source

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._tensors:
            raise HFConversionError(f"{self.source}: missing tensor {name!r}")
        return tuple(self._tensors[name].shape)

    def take(
        self, name: str, expected_shape: Iterable[int], transpose: bool = False
    ) -> np.ndarray:
        """The tensor ``name`` as float32 (floating types) after checking its STORED shape.

        ``expected_shape`` is the shape in the file (PyTorch layout, e.g. Linear ``[out, in]``);
        ``transpose=True`` then returns the 2-D transpose (Flax ``[in, out]``).
        """
        expected = tuple(int(d) for d in expected_shape)
        if name not in self._tensors:
            raise HFConversionError(
                f"{self.source}: missing tensor {name!r} (expected shape {expected})"
            )
        arr = self._tensors[name]
        if tuple(arr.shape) != expected:
            raise HFConversionError(
                f"{self.source}: tensor {name!r} has shape {tuple(arr.shape)}, expected {expected}"
            )
        self._used.add(name)
        if np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16:
            arr = arr.astype(np.float32)
        if transpose:
            if arr.ndim != 2:
                raise HFConversionError(f"{self.source}: cannot transpose {arr.ndim}-D {name!r}")
            arr = arr.T
        return np.ascontiguousarray(arr)

    def unused(self) -> list[str]:
        """Names never taken, sorted."""
        return sorted(set(self._tensors) - self._used)


def read_hf_dir(path: str) -> tuple[dict[str, Any], TensorReader]:
    """Reads ``config.json`` and the weights of an HF model directory."""
    if not os.path.isdir(path):
        raise HFConversionError(f"{path}: not a directory")
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise HFConversionError(f"{path}: no {CONFIG_NAME}")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise HFConversionError(f"{config_path}: invalid JSON ({e})") from e
    if not isinstance(config, dict):
        raise HFConversionError(f"{config_path}: expected a JSON object, got {type(config)}")

    candidates = [
        (SAFETENSORS_NAME, _read_safetensors),
        (SAFETENSORS_INDEX_NAME, lambda p: _read_index(p, _read_safetensors)),
        (BIN_NAME, _read_bin),
        (BIN_INDEX_NAME, lambda p: _read_index(p, _read_bin)),
    ]
    for filename, reader in candidates:
        weights_path = os.path.join(path, filename)
        if os.path.isfile(weights_path):
            return config, TensorReader(reader(weights_path), source=weights_path)
    raise HFConversionError(
        f"{path}: no weights file (looked for {', '.join(name for name, _ in candidates)})"
    )


def write_hf_dir(path: str, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Writes ``config.json`` and ``model.safetensors`` (PyTorch layout tensors) into ``path``."""
    os.makedirs(path, exist_ok=True)
    arrays = {name: np.ascontiguousarray(np.asarray(t)) for name, t in tensors.items()}
    try:  # transformers checks the "pt" format tag
        safetensors.numpy.save_file(arrays, os.path.join(path, SAFETENSORS_NAME),
                                    metadata={"format": "pt"})
    except (safetensors.SafetensorError, ValueError, TypeError) as e:
        raise HFConversionError(f"write_hf_dir: {path}: cannot write tensors ({e})") from e
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
