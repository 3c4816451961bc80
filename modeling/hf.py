"""Hugging Face interop: ``from_hf(path) -> (model, params)`` and ``to_hf(model, params, path)``.

``from_hf`` dispatches on ``config.json``: ``T5ForConditionalGeneration`` (``model_type`` "t5")
is converted here; ``Electra*`` architectures go to ``modeling.hf_electra`` (imported lazily).
Everything is checked before anything is returned: an unknown architecture, a missing tensor,
a shape mismatch or a leftover tensor nobody maps raises ``HFConversionError`` naming the tensor
and the expected vs found shape.

T5 name mapping (HF -> pretrax, PyTorch Linear ``[out, in]`` is transposed for Flax):

* ``shared.weight`` -> ``token_embedder/embedding``; ``lm_head.weight`` -> ``logits_dense/kernel``
  (untied v1.1 only; tied v1.0 computes logits from the embedding, scaled by d_model**-0.5).
* ``{stack}.block.{i}.layer.0.SelfAttention.{q,k,v,o}`` -> ``{stack}/layers_{i}/attention/
  {query,key,value,out}`` with q/k/v kernels ``[d_model, heads, d_kv]`` and o ``[heads, d_kv,
  d_model]``; the decoder's ``layer.1.EncDecAttention`` -> ``cross_attention``; the
  ``DenseReluDense`` of the last layer -> ``mlp`` (``wi`` or ``wi_0``/``wi_1``, ``wo``); each
  ``layer_norm`` -> the norm in front of that sublayer; ``final_layer_norm`` -> ``final_norm``.
* ``{stack}.block.0.layer.0.SelfAttention.relative_attention_bias`` (HF keeps it in block 0
  only) -> the stack's one ``relpos_bias/rel_embedding`` table.
* With ``scan_layers`` the per-layer params are stacked under ``{stack}/layers/block``.

transformers 5.x forces ``tie_word_embeddings=True`` for T5, so it cannot represent an untied
v1.1 model: use transformers<5 (PyTorch) to load/compare untied checkpoints written by ``to_hf``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from modeling import hf_io
from modeling.hf_io import HFConversionError
from modeling.t5 import EncoderDecoder
from modeling.transformer import TransformerConfig

T5_ARCHITECTURE = "T5ForConditionalGeneration"

# HF T5Config defaults, used when config.json omits a field (save_pretrained drops some).
_HF_T5_DEFAULTS = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 6,
    "num_decoder_layers": None,
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "relu",
    "tie_word_embeddings": True,
}
# HF feed_forward_proj -> our TransformerConfig.mlp (HF "gated-gelu" is the tanh GELU, "gelu" the
# exact one, matching ours).
_MLP_FROM_HF = {"relu": "relu", "gated-gelu": "gated-gelu", "gelu": "gelu"}
_MLP_TO_HF = {v: k for k, v in _MLP_FROM_HF.items()}


# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------
def from_hf(path: str, **config_overrides) -> tuple[nn.Module, dict]:
    """Loads an HF model directory; returns ``(model, params)`` with float32 params.

    ``config_overrides`` set non-architectural ``TransformerConfig`` fields of the returned model
    (``dtype``, ``scan_layers``, ``remat_policy``, ``dropout_rate``...); params follow the scan
    layout when ``scan_layers=True``.
    """
    config, reader = hf_io.read_hf_dir(path)
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if any(str(a).startswith("Electra") for a in architectures) or (
        not architectures and model_type == "electra"
    ):
        from modeling.hf_electra import electra_from_hf

        return electra_from_hf(path, config, reader, **config_overrides)
    if T5_ARCHITECTURE in architectures or (not architectures and model_type == "t5"):
        return _t5_from_hf(path, config, reader, config_overrides)
    raise HFConversionError(
        f"{path}: unsupported architecture {architectures or None} (model_type "
        f"{model_type!r}); supported: {T5_ARCHITECTURE}, Electra*"
    )


def to_hf(model: nn.Module, params: Any, path: str) -> None:
    """Writes ``path/config.json`` + ``path/model.safetensors`` that transformers loads."""
    if isinstance(model, EncoderDecoder):
        config, tensors = _t5_to_hf(model.config, params)
        hf_io.write_hf_dir(path, config, tensors)
        return
    if type(model).__module__.startswith("modeling.electra"):
        from modeling.hf_electra import electra_to_hf

        electra_to_hf(model, params, path)
        return
    raise HFConversionError(f"to_hf: no HF export for {type(model).__name__}")


# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------
def t5_config_from_hf(config: dict[str, Any], **overrides) -> TransformerConfig:
    """HF T5Config fields -> a pretrax ``TransformerConfig``."""
    c = {**_HF_T5_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    ff = c["feed_forward_proj"]
    if ff not in _MLP_FROM_HF:
        raise HFConversionError(
            f"config.json: feed_forward_proj {ff!r} unsupported; expected one of "
            f"{sorted(_MLP_FROM_HF)}"
        )
    fixed = dict(
        vocab_size=int(c["vocab_size"]),
        d_model=int(c["d_model"]),
        num_heads=int(c["num_heads"]),
        head_dim=int(c["d_kv"]),
        d_ff=int(c["d_ff"]),
        num_layers=int(c["num_layers"]),
        num_decoder_layers=int(c["num_decoder_layers"] or c["num_layers"]),
        tie_embeddings=bool(c["tie_word_embeddings"]),
        norm="rms",
        norm_eps=float(c["layer_norm_epsilon"]),
        prenorm=True,
        use_bias=False,
        position="relative",
        relative_buckets=int(c["relative_attention_num_buckets"]),
        relative_max_distance=int(c["relative_attention_max_distance"]),
        mlp=_MLP_FROM_HF[ff],
        scale_attention=False,
        init="t5",
    )
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        raise HFConversionError(f"from_hf: {clash} come from config.json and cannot be overridden")
    fixed["dropout_rate"] = float(c["dropout_rate"])
    try:
        return TransformerConfig(**{**fixed, **overrides})
    except TypeError as e:
        raise HFConversionError(f"from_hf: bad config override ({e})") from e


def t5_config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
    """A pretrax T5 ``TransformerConfig`` -> HF ``config.json`` contents."""
    not_t5 = [
        (name, getattr(cfg, name), want)
        for name, want in (("norm", "rms"), ("prenorm", True), ("use_bias", False),
                           ("position", "relative"), ("scale_attention", False))
        if getattr(cfg, name) != want
    ]
    if not_t5 or cfg.mlp not in _MLP_TO_HF:
        raise HFConversionError(f"to_hf: not a T5 config: {not_t5 or ('mlp', cfg.mlp)}")
    return {
        "architectures": [T5_ARCHITECTURE],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": _MLP_TO_HF[cfg.mlp],
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


# ---------------------------------------------------------------------------------------------
# The tensor table: (our path, HF name, HF shape, kind) for both directions.
# kind: "copy" same layout; "t" 2-D transpose; "qkv" HF [heads*kv, d] <-> ours [d, heads, kv];
# "o" HF [d, heads*kv] <-> ours [heads, kv, d].
# ---------------------------------------------------------------------------------------------
def _t5_table(cfg: TransformerConfig) -> list[tuple[tuple[str, ...], str, tuple, str]]:
    d, inner, f = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.d_ff
    table = [(("token_embedder", "embedding"), "shared.weight", (cfg.vocab_size, d), "copy")]
    if not cfg.tie_embeddings:
        table.append((("logits_dense", "kernel"), "lm_head.weight", (cfg.vocab_size, d), "t"))

    def attention(ours, hf):
        out = [((*ours, name, "kernel"), f"{hf}.{x}.weight", (inner, d), "qkv")
               for name, x in (("query", "q"), ("key", "k"), ("value", "v"))]
        return out + [((*ours, "out", "kernel"), f"{hf}.o.weight", (d, inner), "o")]

    def mlp(ours, hf):
        wi = ("wi_0", "wi_1") if cfg.mlp == "gated-gelu" else ("wi",)
        out = [((*ours, "mlp", w, "kernel"), f"{hf}.DenseReluDense.{w}.weight", (f, d), "t")
               for w in wi]
        out.append(((*ours, "mlp", "wo", "kernel"), f"{hf}.DenseReluDense.wo.weight", (d, f), "t"))
        return out + [((*ours, "mlp_norm", "scale"), f"{hf}.layer_norm.weight", (d,), "copy")]

    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        table.append(((stack, "relpos_bias", "rel_embedding"),
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (cfg.relative_buckets, cfg.num_heads), "copy"))
        for i in range(n):
            ours, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
            table += attention((*ours, "attention"), f"{hf}.0.SelfAttention")
            table.append(((*ours, "attention_norm", "scale"), f"{hf}.0.layer_norm.weight", (d,),
                          "copy"))
            if stack == "decoder":
                table += attention((*ours, "cross_attention"), f"{hf}.1.EncDecAttention")
                table.append(((*ours, "cross_attention_norm", "scale"),
                              f"{hf}.1.layer_norm.weight", (d,), "copy"))
            table += mlp(ours, f"{hf}.{2 if stack == 'decoder' else 1}")
        table.append(((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", (d,),
                      "copy"))
    return table


def _hf_to_ours(arr: np.ndarray, kind: str, cfg: TransformerConfig) -> np.ndarray:
    h, k, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    if kind == "qkv":
        # [heads * kv, d] -> [d, heads, kv]
        return arr.T.reshape(d, h, k)
    if kind == "o":
        # [d, heads * kv] -> [heads, kv, d]
        return arr.T.reshape(h, k, d)
    return arr.T if kind == "t" else arr


def _ours_to_hf(arr: np.ndarray, kind: str, cfg: TransformerConfig) -> np.ndarray:
    h, k, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    if kind == "qkv":
        # [d, heads, kv] -> [heads * kv, d]
        return arr.reshape(d, h * k).T
    if kind == "o":
        # [heads, kv, d] -> [d, heads * kv]
        return arr.reshape(h * k, d).T
    return arr.T if kind == "t" else arr


def _stack_layers(flat: dict) -> dict:
    """Per-layer ``{stack}/layers_{i}/...`` -> scanned ``{stack}/layers/block/...``."""
    out, per_layer = {}, {}
    for path, arr in flat.items():
        if path[1].startswith("layers_"):
            key = (path[0], "layers", "block", *path[2:])
            per_layer.setdefault(key, {})[int(path[1][len("layers_"):])] = arr
        else:
            out[path] = arr
    for key, by_index in per_layer.items():
        out[key] = np.stack([by_index[i] for i in range(len(by_index))])
    return out


def _unstack_layers(flat: dict) -> dict:
    out = {}
    for path, arr in flat.items():
        if len(path) > 2 and path[1:3] == ("layers", "block"):
            for i in range(arr.shape[0]):
                out[(path[0], f"layers_{i}", *path[3:])] = arr[i]
        else:
            out[path] = arr
    return out


# ---------------------------------------------------------------------------------------------
# T5 conversion.
# ---------------------------------------------------------------------------------------------
def _t5_from_hf(path: str, config: dict, reader: hf_io.TensorReader, overrides: dict):
    cfg = t5_config_from_hf(config, **overrides)
    flat = {}
    for ours, hf_name, hf_shape, kind in _t5_table(cfg):
        flat[ours] = _hf_to_ours(reader.take(hf_name, hf_shape), kind, cfg)
    # Aliases of the shared embedding that .bin checkpoints (and tied lm_heads) carry.
    aliases = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if cfg.tie_embeddings:
        aliases.append("lm_head.weight")
    shared = flat[("token_embedder", "embedding")]
    for name in aliases:
        if name in reader:
            if not np.array_equal(reader.take(name, shared.shape), shared):
                raise HFConversionError(
                    f"{reader.source}: {name!r} should be tied to 'shared.weight' but differs"
                )
    leftover = reader.unused()
    if leftover:
        raise HFConversionError(f"{reader.source}: unexpected tensors not mapped: {leftover}")
    if cfg.scan_layers:
        flat = _stack_layers(flat)
    params = traverse_util.unflatten_dict(flat)

    model = EncoderDecoder(cfg)
    _check_against_init(model, params, path)
    return model, jax.tree_util.tree_map(np.asarray, params)


def _check_against_init(model: EncoderDecoder, params: dict, source: str) -> None:
    """The converted tree must have exactly the names and shapes ``model.init`` would create."""
    dummy = np.zeros((1, 2), np.int32)
    expected = jax.eval_shape(
        lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy)["params"])
    )
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
    got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
    if want != got:
        diff = sorted(
            ("/".join(k), want.get(k), got.get(k))
            for k in set(want) | set(got) if want.get(k) != got.get(k)
        )
        raise HFConversionError(f"{source}: converted params differ from the model's "
                                f"(name, expected, found): {diff[:10]}")


def _t5_to_hf(cfg: TransformerConfig, params: Any) -> tuple[dict, dict[str, np.ndarray]]:
    hf_config = t5_config_to_hf(cfg)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat.items()}
    if cfg.scan_layers:
        flat = _unstack_layers(flat)
    tensors = {}
    expected = set()
    for ours, hf_name, hf_shape, kind in _t5_table(cfg):
        expected.add(ours)
        if ours not in flat:
            raise HFConversionError(f"to_hf: params lack {'/'.join(ours)} (for {hf_name!r})")
        arr = _ours_to_hf(flat[ours], kind, cfg)
        if arr.shape != hf_shape:
            raise HFConversionError(f"to_hf: {'/'.join(ours)} gives {hf_name!r} shape "
                                    f"{arr.shape}, expected {hf_shape}")
        tensors[hf_name] = np.ascontiguousarray(arr)
    extra = sorted("/".join(k) for k in set(flat) - expected)
    if extra:
        raise HFConversionError(f"to_hf: params not exported (not part of T5): {extra}")
    return hf_config, tensors


__all__ = ["HFConversionError", "from_hf", "to_hf", "t5_config_from_hf", "t5_config_to_hf"]
