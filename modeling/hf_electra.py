"""Hugging Face interop for the ELECTRA family (dispatched to by ``modeling.hf``).

* ``electra_from_hf(path, config, reader)``: an ``ElectraForSequenceClassification`` directory
  -> ``ElectraClassifier`` (HF head style: ``head/{dense,out_proj}``); an
  ``ElectraForPreTraining`` directory ->
  ``ElectraDiscriminator`` (apply -> ``[batch, length]`` float32 logits); an
  ``ElectraForMaskedLM`` directory -> ``ElectraGenerator`` (apply without ``masked_positions`` ->
  ``[batch, length, vocab]``). Inputs are the batch keys of ``modeling.electra``:
  ``encoder_input_tokens`` (HF ``input_ids``; 0 = padding, which replaces HF's
  ``attention_mask``), ``encoder_token_type_ids`` (HF ``token_type_ids``).
* ``electra_join(disc_dir, gen_dir)``: both directories -> one ``Electra`` (tied sharing) after
  checking that the shared tables (word / position / token-type embeddings, embedding LayerNorm)
  agree. By default a disagreement raises; ``winner="discriminator"|"generator"`` keeps that
  network's copy instead and warns with the max abs difference.
* ``electra_to_hf(model, params, path)``: a discriminator or generator -> one directory; an
  ``Electra`` -> ``path/discriminator`` and ``path/generator``, each with its own copy of the
  shared embeddings (gdes: the discriminator's word table is ``shared + delta``).

Name mapping (PyTorch Linear ``[out, in]`` is transposed; q/k/v kernels reshape to ``[embed,
heads, head_dim]``, the attention output to ``[heads, head_dim, embed]``):

| HF (prefix ``electra.``) | pretrax |
|---|---|
| ``embeddings.{word,position,token_type}_embeddings.weight`` | ``embeddings/{word,position,token_type}/embedding`` |
| ``embeddings.LayerNorm.{weight,bias}`` | ``embeddings/norm/{scale,bias}`` |
| ``embeddings_project`` | ``network/embeddings_project`` |
| ``encoder.layer.{i}.attention.self.{query,key,value}`` | ``network/stack/layers_{i}/attention/{query,key,value}`` |
| ``...attention.output.dense`` / ``.LayerNorm`` | ``.../attention/out`` / ``.../attention_norm`` |
| ``...intermediate.dense`` / ``...output.dense`` / ``.LayerNorm`` | ``.../mlp/wi`` / ``.../mlp/wo`` / ``.../mlp_norm`` |
| ``discriminator_predictions.{dense,dense_prediction}`` | ``head/{dense,prediction}`` |
| ``generator_predictions.{dense,LayerNorm}``, ``generator_lm_head.bias`` | ``head/{dense,norm}``, ``head/output_bias`` |

With ``scan_layers`` the layers are stacked under ``network/stack/layers/block``.
"""  # noqa: E501

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from modeling import electra, hf_io
from modeling.hf_io import HFConversionError, TensorReader
from modeling.transformer import TransformerConfig

DISCRIMINATOR_ARCH = "ElectraForPreTraining"
GENERATOR_ARCH = "ElectraForMaskedLM"
CLASSIFIER_ARCH = "ElectraForSequenceClassification"

# transformers.ElectraConfig defaults: save_pretrained omits fields equal to them.
_HF_DEFAULTS = {
    "vocab_size": 30522, "embedding_size": 128, "hidden_size": 256, "num_hidden_layers": 12,
    "num_attention_heads": 4, "intermediate_size": 1024, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "tie_word_embeddings": True,
}
# HF buffers that some (older) checkpoints store; they carry no weights.
_BUFFERS = ("electra.embeddings.position_ids", "electra.embeddings.token_type_ids")
_SHARED = (("word", "embedding"), ("position", "embedding"), ("token_type", "embedding"),
           ("norm", "scale"), ("norm", "bias"))


# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------
def config_from_hf(config: dict[str, Any], **overrides: Any) -> TransformerConfig:
    """HF ``ElectraConfig`` fields -> a pretrax ``TransformerConfig`` (ELECTRA core)."""
    c = {**_HF_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if c["hidden_act"] != "gelu":
        raise HFConversionError(f"config.json: hidden_act {c['hidden_act']!r} unsupported; "
                                "expected 'gelu' (exact erf GELU)")
    if c["position_embedding_type"] != "absolute":
        raise HFConversionError(f"config.json: position_embedding_type "
                                f"{c['position_embedding_type']!r} unsupported; "
                                "expected 'absolute'")
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if hidden % heads:
        raise HFConversionError(f"config.json: hidden_size {hidden} is not a multiple of "
                                f"num_attention_heads {heads}")
    fixed = dict(
        vocab_size=int(c["vocab_size"]), d_model=hidden, num_heads=heads,
        head_dim=hidden // heads, d_ff=int(c["intermediate_size"]),
        num_layers=int(c["num_hidden_layers"]), embedding_size=int(c["embedding_size"]),
        max_positions=int(c["max_position_embeddings"]),
        type_vocab_size=int(c["type_vocab_size"]), norm_eps=float(c["layer_norm_eps"]),
        init_range=float(c["initializer_range"]),
    )
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        raise HFConversionError(f"from_hf: {clash} come from config.json and cannot be overridden")
    # One dropout rate in the core: HF's hidden dropout (attention dropout is usually equal).
    fixed["dropout_rate"] = float(c["hidden_dropout_prob"])
    try:
        return electra.electra_core(**{**fixed, **overrides})
    except TypeError as e:
        raise HFConversionError(f"from_hf: bad config override ({e})") from e


def config_to_hf(cfg: TransformerConfig, architecture: str) -> dict[str, Any]:
    """A pretrax ELECTRA ``TransformerConfig`` -> HF ``config.json`` contents."""
    if cfg.num_heads * cfg.head_dim != cfg.d_model:
        raise HFConversionError(f"to_hf: HF needs num_heads * head_dim == d_model, got "
                                f"{cfg.num_heads} * {cfg.head_dim} != {cfg.d_model}")
    return {
        "architectures": [architecture], "model_type": "electra",
        "vocab_size": cfg.vocab_size, "embedding_size": electra.embedding_width(cfg),
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.d_ff,
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": cfg.dropout_rate,
        "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.init_range, "layer_norm_eps": cfg.norm_eps,
        "position_embedding_type": "absolute", "pad_token_id": 0, "tie_word_embeddings": True,
    }


# ---------------------------------------------------------------------------------------------
# HF tensors -> params.
# ---------------------------------------------------------------------------------------------
def _linear(r: TensorReader, name: str, n_in: int, n_out: int) -> dict:
    return {"kernel": r.take(f"{name}.weight", (n_out, n_in), transpose=True),
            "bias": r.take(f"{name}.bias", (n_out,))}


def _norm(r: TensorReader, name: str, n: int) -> dict:
    return {"scale": r.take(f"{name}.weight", (n,)), "bias": r.take(f"{name}.bias", (n,))}


def _embeddings_from_hf(r: TensorReader, cfg: TransformerConfig) -> dict:
    p, e = "electra.embeddings", electra.embedding_width(cfg)
    return {
        "word": {"embedding": r.take(f"{p}.word_embeddings.weight", (cfg.vocab_size, e))},
        "position": {"embedding": r.take(f"{p}.position_embeddings.weight",
                                         (cfg.max_positions, e))},
        "token_type": {"embedding": r.take(f"{p}.token_type_embeddings.weight",
                                           (cfg.type_vocab_size, e))},
        "norm": _norm(r, f"{p}.LayerNorm", e),
    }


def _network_from_hf(r: TensorReader, cfg: TransformerConfig) -> dict:
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff
    out: dict[str, Any] = {}
    if electra.embedding_width(cfg) != d:
        out["embeddings_project"] = _linear(r, "electra.embeddings_project",
                                            electra.embedding_width(cfg), d)
    layers = []
    for i in range(cfg.num_layers):
        p = f"electra.encoder.layer.{i}"
        att = {}
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
            lin = _linear(r, f"{p}.attention.self.{theirs}", d, h * k)
            # [embed, heads * kv] -> [embed, heads, kv]
            att[ours] = {"kernel": lin["kernel"].reshape(d, h, k),
                         "bias": lin["bias"].reshape(h, k)}
        lin = _linear(r, f"{p}.attention.output.dense", h * k, d)
        # [heads * kv, embed] -> [heads, kv, embed]
        att["out"] = {"kernel": lin["kernel"].reshape(h, k, d), "bias": lin["bias"]}
        layers.append({
            "attention": att,
            "attention_norm": _norm(r, f"{p}.attention.output.LayerNorm", d),
            "mlp": {"wi": _linear(r, f"{p}.intermediate.dense", d, f),
                    "wo": _linear(r, f"{p}.output.dense", f, d)},
            "mlp_norm": _norm(r, f"{p}.output.LayerNorm", d),
        })
    if cfg.scan_layers:
        out["stack"] = {"layers": {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}}
    else:
        out["stack"] = {f"layers_{i}": layer for i, layer in enumerate(layers)}
    return out


def _check_tied_output(r: TensorReader, config: dict, word: np.ndarray) -> None:
    """The MLM output layer must be the word table (pretrax ties it); HF may omit the copy."""
    name = "generator_lm_head.weight"
    if name not in r:
        return
    out = r.take(name, word.shape)
    diff = float(np.max(np.abs(out - word)))
    if diff > 0.0:
        raise HFConversionError(
            f"{r.source}: {name!r} differs from the word embeddings (max abs diff {diff:.3g}, "
            f"tie_word_embeddings={config.get('tie_word_embeddings', True)}); pretrax ties "
            "the generator's output layer to its word embeddings")


def _architecture(path: str, config: dict, r: TensorReader) -> str:
    archs = config.get("architectures") or []
    known = (DISCRIMINATOR_ARCH, GENERATOR_ARCH, CLASSIFIER_ARCH)
    found = [a for a in archs if a in known]
    if not archs:  # no architectures entry: infer from the head's tensors
        if "discriminator_predictions.dense.weight" in r:
            return DISCRIMINATOR_ARCH
        if "generator_predictions.dense.weight" in r:
            return GENERATOR_ARCH
        if "classifier.out_proj.weight" in r:
            return CLASSIFIER_ARCH
    if len(found) != 1:
        raise HFConversionError(f"{path}: unsupported ELECTRA architecture {archs or None}; "
                                f"supported: {', '.join(known)}")
    return found[0]


def electra_from_hf(path: str, config: dict[str, Any], reader: TensorReader,
                    **overrides: Any) -> tuple[nn.Module, dict]:
    """An HF ELECTRA directory (already read) -> ``(model, params)``; float32 params.

    ``overrides`` set non-architectural ``TransformerConfig`` fields (dtype, scan_layers...).
    """
    arch = _architecture(path, config, reader)
    cfg = config_from_hf(config, **overrides)
    params = {"embeddings": _embeddings_from_hf(reader, cfg),
              "network": _network_from_hf(reader, cfg)}
    d, e = cfg.d_model, electra.embedding_width(cfg)
    if arch == DISCRIMINATOR_ARCH:
        model: nn.Module = electra.ElectraDiscriminator(cfg)
        p = "discriminator_predictions"
        params["head"] = {"dense": _linear(reader, f"{p}.dense", d, d),
                          "prediction": _linear(reader, f"{p}.dense_prediction", d, 1)}
    elif arch == CLASSIFIER_ARCH:
        num_labels = reader.shape("classifier.out_proj.weight")[0]
        dropout = config.get("classifier_dropout")
        model = electra.ElectraClassifier(
            cfg, num_labels, cfg.dropout_rate if dropout is None else dropout, head_style="hf")
        params["head"] = {"dense": _linear(reader, "classifier.dense", d, d),
                          "out_proj": _linear(reader, "classifier.out_proj", d, num_labels)}
    else:
        model = electra.ElectraGenerator(cfg)
        _check_tied_output(reader, config, params["embeddings"]["word"]["embedding"])
        params["head"] = {"dense": _linear(reader, "generator_predictions.dense", d, e),
                          "norm": _norm(reader, "generator_predictions.LayerNorm", e),
                          "output_bias": reader.take("generator_lm_head.bias", (cfg.vocab_size,))}
    for name in _BUFFERS:
        if name in reader:
            reader.take(name, reader.shape(name))
    leftover = reader.unused()
    if leftover:
        raise HFConversionError(f"{reader.source}: tensors not mapped to {arch}: {leftover}")
    return model, params


def _max_abs_diffs(a: dict, b: dict) -> dict[str, float]:
    return {f"{m}/{p}": float(np.max(np.abs(np.asarray(a[m][p]) - np.asarray(b[m][p]))))
            for m, p in _SHARED}


def electra_join(disc_dir: str, gen_dir: str, *, winner: str | None = None, atol: float = 0.0,
                 **overrides: Any) -> tuple[electra.Electra, dict]:
    """A discriminator and a generator directory -> one ``Electra`` with shared embeddings.

    The shared tables must agree within ``atol`` (max abs diff); otherwise ``winner=None``
    raises ``HFConversionError`` listing each table's difference, and ``winner=
    "discriminator"`` or ``"generator"`` keeps that copy with a warning.
    """
    if winner not in (None, "discriminator", "generator"):
        raise ValueError(f"winner must be None, 'discriminator' or 'generator', got {winner!r}")
    disc_model, disc = electra_from_hf(disc_dir, *hf_io.read_hf_dir(disc_dir), **overrides)
    gen_model, gen = electra_from_hf(gen_dir, *hf_io.read_hf_dir(gen_dir), **overrides)
    if not isinstance(disc_model, electra.ElectraDiscriminator):
        raise HFConversionError(f"{disc_dir}: expected {DISCRIMINATOR_ARCH}")
    if not isinstance(gen_model, electra.ElectraGenerator):
        raise HFConversionError(f"{gen_dir}: expected {GENERATOR_ARCH}")
    dcfg, gcfg = disc_model.config, gen_model.config
    for name in ("vocab_size", "embedding_size", "max_positions", "type_vocab_size"):
        if getattr(dcfg, name) != getattr(gcfg, name):
            raise HFConversionError(f"{disc_dir} / {gen_dir}: {name} differs "
                                    f"({getattr(dcfg, name)} vs {getattr(gcfg, name)})")
    diffs = _max_abs_diffs(disc["embeddings"], gen["embeddings"])
    worst = max(diffs.values())
    embeddings = disc["embeddings"]
    if worst > atol:
        if winner is None:
            raise HFConversionError(
                f"{disc_dir} / {gen_dir}: shared embeddings disagree (max abs diff per table "
                f"{diffs}); pass winner='discriminator' or 'generator' to keep one copy")
        warnings.warn(f"electra_join: shared embeddings disagree by up to {worst:.3g} "
                      f"({diffs}); keeping the {winner}'s", stacklevel=2)
        embeddings = disc["embeddings"] if winner == "discriminator" else gen["embeddings"]
    # The fraction is informational here: the explicit generator config decides.
    cfg = electra.ElectraConfig(dcfg, generator_fraction=min(1.0, gcfg.d_model / dcfg.d_model),
                                embedding_sharing="tied", generator=gcfg)
    params = {"embeddings": embeddings, "discriminator": disc["network"],
              "discriminator_head": disc["head"], "generator": gen["network"],
              "generator_head": gen["head"]}
    return electra.Electra(cfg), params


# ---------------------------------------------------------------------------------------------
# params -> HF tensors.
# ---------------------------------------------------------------------------------------------
def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _to_linear(out: dict, name: str, p: dict, n_in: int = 1) -> None:
    """A kernel whose first ``n_in`` axes are inputs -> Linear weight ``[out, in]``."""
    kernel = _np(p["kernel"])
    # e.g. [embed, heads, kv] -> [embed, heads * kv] -> [heads * kv, embed]
    flat = kernel.reshape(int(np.prod(kernel.shape[:n_in])), -1)
    out[f"{name}.weight"] = np.ascontiguousarray(flat.T)
    out[f"{name}.bias"] = _np(p["bias"]).reshape(-1)


def _to_norm(out: dict, name: str, p: dict) -> None:
    out[f"{name}.weight"], out[f"{name}.bias"] = _np(p["scale"]), _np(p["bias"])


def _single_to_hf(cfg: TransformerConfig, params: dict, generator: bool) -> dict:
    out: dict[str, np.ndarray] = {}
    emb, net, head = params["embeddings"], params["network"], params["head"]
    for ours in ("word", "position", "token_type"):
        out[f"electra.embeddings.{ours}_embeddings.weight"] = _np(emb[ours]["embedding"])
    _to_norm(out, "electra.embeddings.LayerNorm", emb["norm"])
    if "embeddings_project" in net:
        _to_linear(out, "electra.embeddings_project", net["embeddings_project"])
    stack = net["stack"]
    for i in range(cfg.num_layers):
        if "layers" in stack:  # scanned: slice layer i
            layer = jax.tree.map(lambda x, i=i: _np(x)[i], stack["layers"]["block"])
        else:
            layer = stack[f"layers_{i}"]
        p, att = f"electra.encoder.layer.{i}", layer["attention"]
        for name in ("query", "key", "value"):
            _to_linear(out, f"{p}.attention.self.{name}", att[name])
        _to_linear(out, f"{p}.attention.output.dense", att["out"], n_in=2)
        _to_norm(out, f"{p}.attention.output.LayerNorm", layer["attention_norm"])
        _to_linear(out, f"{p}.intermediate.dense", layer["mlp"]["wi"])
        _to_linear(out, f"{p}.output.dense", layer["mlp"]["wo"])
        _to_norm(out, f"{p}.output.LayerNorm", layer["mlp_norm"])
    if generator:
        _to_linear(out, "generator_predictions.dense", head["dense"])
        _to_norm(out, "generator_predictions.LayerNorm", head["norm"])
        # The tied weight is not written (as HF's own save); transformers re-ties it on load.
        out["generator_lm_head.bias"] = _np(head["output_bias"])
    else:
        _to_linear(out, "discriminator_predictions.dense", head["dense"])
        _to_linear(out, "discriminator_predictions.dense_prediction", head["prediction"])
    return out


def electra_to_hf(model: nn.Module, params: Any, path: str) -> None:
    """Writes HF directories (see the module docstring for the layout)."""
    params = nn.meta.unbox(params)
    if isinstance(model, electra.Electra):
        cfg = model.config
        electra_to_hf(electra.ElectraDiscriminator(cfg.discriminator),
                      electra.discriminator_params(cfg, params), os.path.join(path,
                                                                              "discriminator"))
        electra_to_hf(electra.ElectraGenerator(cfg.generator_config()),
                      electra.generator_params(cfg, params), os.path.join(path, "generator"))
        return
    if isinstance(model, electra.ElectraDiscriminator):
        arch, generator = DISCRIMINATOR_ARCH, False
    elif isinstance(model, electra.ElectraGenerator):
        arch, generator = GENERATOR_ARCH, True
    else:
        raise HFConversionError(f"electra_to_hf: no HF export for {type(model).__name__}")
    cfg = model.config
    hf_io.write_hf_dir(path, config_to_hf(cfg, arch), _single_to_hf(cfg, params, generator))
