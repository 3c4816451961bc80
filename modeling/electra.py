"""ELECTRA (Clark et al. 2020): generator + discriminator on the shared transformer core.

Batch keys (seqio's encoder-only names; every model method takes them as keyword arguments):

| key | shape / dtype | meaning |
|---|---|---|
| ``encoder_input_tokens`` | [batch, length] int | token ids, 0 = padding (masked as keys) |
| ``encoder_token_type_ids`` | [batch, length] int, optional | BERT segment A/B ids (default 0) |
| ``encoder_segment_ids`` | [batch, length] int, optional | packing: attend within a segment |
| ``encoder_positions`` | [batch, length] int, optional | position index (default arange) |
| ``masked_positions`` | [batch, num_masked] int | generator/MLM head positions |

Padding follows Hugging Face: only padding KEYS are masked, query rows are not, so every position
(padding included) matches ``ElectraModel`` given ``attention_mask = tokens != 0``.

Modules (all compose ``transformer.Stack``; nothing subclasses a model):

- ``Embeddings``: word / position / token-type tables of width ``embedding_size``, LayerNorm,
  dropout. ``Network``: ``embeddings_project`` (only if ``embedding_size != d_model``) + ``Stack``.
- ``ElectraDiscriminator`` -> ``[batch, length]`` float32 replaced logits (HF
  ``ElectraForPreTraining``); ``ElectraGenerator`` (= ``MlmEncoder``, the paper's BERT baseline at
  full size) -> MLM logits ``[batch, num_masked, vocab]`` computed only at ``masked_positions``,
  or ``[batch, length, vocab]`` without them (HF ``ElectraForMaskedLM``);
  ``ElectraClassifier`` -> ``[batch, num_classes]`` from the [CLS] vector.
- ``Electra``: both networks in one module for pretraining (``generator_logits``,
  ``discriminator_logits``, ``__call__`` = both). ``ElectraConfig.embedding_sharing`` selects:
  ``"tied"`` (the paper: word, position and token-type tables and the embedding LayerNorm are
  shared; each network keeps its own ``embeddings_project``), ``"untied"`` (the generator has its
  own embeddings), ``"all"`` (the generator IS the discriminator's encoder, with its own MLM
  head; needs ``generator_fraction == 1``), ``"gdes"`` (DeBERTa-v3 gradient-disentangled
  sharing: the discriminator's word table is ``stop_gradient(shared) + delta``, delta initialised
  to zero, so the discriminator never moves the generator's word embeddings; position/type
  tables and the LayerNorm stay plainly shared). With ``main_mlm_head`` the discriminator
  network also has an MLM head (``main_logits``) for the Replace / All-Tokens MLM ablations.

Fine-tuning: ``ElectraClassifier`` takes ``discriminator_params(cfg, params)``'s ``embeddings``
and ``network``; ``generator_params`` gives the generator alone (both used by HF export).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from modeling import axes, layers
from modeling.heads import ClassificationHead, DiscriminatorHead, MlmHead, gather_positions
from modeling.transformer import Stack, TransformerConfig, activation_constraint

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Config and presets.
# ---------------------------------------------------------------------------------------------
SHARING_MODES = ("tied", "untied", "all", "gdes")


def embedding_width(cfg: TransformerConfig) -> int:
    return cfg.embedding_size or cfg.d_model


def electra_core(**fields: Any) -> TransformerConfig:
    """A BERT/ELECTRA ``TransformerConfig``: post-LN, biases, absolute positions, erf GELU."""
    base = dict(
        norm="layer", norm_eps=1e-12, prenorm=False, use_bias=True, position="absolute",
        mlp="gelu", scale_attention=True, init="bert", init_range=0.02, max_positions=512,
        type_vocab_size=2, dropout_rate=0.1, vocab_size=30522, num_decoder_layers=0,
        mlp_hidden_dropout=False,
    )
    base.update(fields)
    return TransformerConfig(**base)


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
    """The discriminator's ``TransformerConfig`` plus how the generator is derived and shared.

    The generator keeps the discriminator's depth and embedding width and scales its width:
    hidden = round(fraction * d_model), heads = max(1, hidden // 64), d_ff = 4 * hidden (the
    reference code's rule). ``generator`` overrides the derived config (e.g. a Hugging Face
    generator joined with ``hf_electra.electra_join``).
    """

    discriminator: TransformerConfig
    generator_fraction: float = 0.25
    embedding_sharing: str = "tied"  # one of SHARING_MODES (see the module docstring)
    generator: TransformerConfig | None = None
    # Table 5 ablations (Replace MLM, All-Tokens MLM): the discriminator network also gets an
    # MLM head tied to its word table (``Electra.main_logits``); its replaced-token head then
    # doubles as All-Tokens MLM's copy gate.
    main_mlm_head: bool = False

    def __post_init__(self):
        if self.embedding_sharing not in SHARING_MODES:
            raise ValueError(f"ElectraConfig.embedding_sharing must be one of {SHARING_MODES}, "
                             f"got {self.embedding_sharing!r}")
        if not 0.0 < self.generator_fraction <= 1.0:
            raise ValueError(f"ElectraConfig.generator_fraction must be in (0, 1], got "
                             f"{self.generator_fraction}")
        if self.embedding_sharing == "all" and (self.generator is not None
                                                or self.generator_fraction != 1.0):
            raise ValueError("embedding_sharing='all' makes the generator the discriminator's "
                             "encoder: it needs generator_fraction=1.0 and no generator config, "
                             f"got fraction {self.generator_fraction}")
        gen = self.generator_config()
        for name in ("vocab_size", "max_positions", "type_vocab_size"):
            if getattr(gen, name) != getattr(self.discriminator, name):
                raise ValueError(f"generator {name}={getattr(gen, name)} must equal the "
                                 f"discriminator's {getattr(self.discriminator, name)}")
        if embedding_width(gen) != self.embedding_size:
            raise ValueError(f"generator embedding width {embedding_width(gen)} must equal the "
                             f"discriminator's {self.embedding_size} (shared tables)")

    @property
    def embedding_size(self) -> int:
        return embedding_width(self.discriminator)

    def generator_config(self) -> TransformerConfig:
        if self.generator is not None:
            return self.generator
        disc = self.discriminator
        if self.embedding_sharing == "all":
            return disc
        hidden = max(1, round(disc.d_model * self.generator_fraction))
        heads = max(1, hidden // 64)
        if hidden % heads:
            raise ValueError(f"generator hidden {hidden} is not divisible by its {heads} heads")
        return dataclasses.replace(disc, d_model=hidden, num_heads=heads,
                                   head_dim=hidden // heads, d_ff=4 * hidden,
                                   embedding_size=self.embedding_size)


def _small(**kw: Any) -> TransformerConfig:
    return electra_core(d_model=256, num_heads=4, head_dim=64, d_ff=1024, num_layers=12,
                        embedding_size=128, **kw)


PRESETS: dict[str, ElectraConfig] = {
    # 4 layers would do for smoke runs; 2 keep the tests fast. Embedding 16 -> hidden 32 so the
    # factorized path (embeddings_project) is exercised; generator 1/2 -> hidden 16, 1 head.
    "tiny": ElectraConfig(
        electra_core(vocab_size=512, d_model=32, num_heads=2, head_dim=16, d_ff=128,
                     num_layers=2, embedding_size=16, max_positions=64, dropout_rate=0.0),
        generator_fraction=0.5),
    "electra_small": ElectraConfig(_small(), generator_fraction=0.25),
    # The released ELECTRA-Small ("small++"): same discriminator, full-width generator.
    "electra_small_pp": ElectraConfig(_small(), generator_fraction=1.0),
    "electra_base": ElectraConfig(
        electra_core(d_model=768, num_heads=12, head_dim=64, d_ff=3072, num_layers=12),
        generator_fraction=1 / 3),
    "electra_large": ElectraConfig(
        electra_core(d_model=1024, num_heads=16, head_dim=64, d_ff=4096, num_layers=24),
        generator_fraction=0.25),
}

# Mask probability of each preset's PRETRAINING recipe (a property of the objective config,
# not of the model; Large uses 0.25). Read by configs/electra.py.
PRETRAINING_MASK_PROB = {"tiny": 0.15, "electra_small": 0.15, "electra_small_pp": 0.15,
                         "electra_base": 0.15, "electra_large": 0.25}


def get_electra_config(name: str, **overrides: Any) -> ElectraConfig:
    """A preset with overrides: ``ElectraConfig`` fields first, else discriminator fields.

    Discriminator overrides (dtype, scan_layers, remat_policy, d_model...) flow into the
    derived generator too. Unknown names raise.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown ELECTRA preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[name]
    top = {f.name for f in dataclasses.fields(ElectraConfig)} - {"discriminator"}
    core = {f.name for f in dataclasses.fields(TransformerConfig)}
    top_kw = {k: v for k, v in overrides.items() if k in top}
    core_kw = {k: v for k, v in overrides.items() if k not in top and k in core}
    unknown = sorted(set(overrides) - set(top_kw) - set(core_kw))
    if unknown:
        raise ValueError(f"unknown ELECTRA config overrides {unknown}; valid: ElectraConfig "
                         f"{sorted(top)} or TransformerConfig fields")
    disc = dataclasses.replace(cfg.discriminator, **core_kw)
    return dataclasses.replace(cfg, discriminator=disc, **top_kw)


def encoder_mask(tokens: Array, segment_ids: Array | None) -> Array:
    """Boolean ``[batch, 1, length, length]``: non-padding keys, same segment if packed."""
    valid = tokens != 0
    return layers.attention_mask(None, valid, segment_ids, segment_ids)


# ---------------------------------------------------------------------------------------------
# Embeddings and the encoder network.
# ---------------------------------------------------------------------------------------------
class Embeddings(nn.Module):
    """BERT embeddings: word + position + token type -> LayerNorm -> dropout."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        width = embedding_width(cfg)
        init = cfg.embed_init()
        self.word = layers.Embed(cfg.vocab_size, width, (axes.VOCAB, axes.EMBED_PROJ),
                                 embedding_init=init)
        self.position = layers.Embed(cfg.max_positions, width, (axes.ABSPOS, axes.EMBED_PROJ),
                                     embedding_init=init)
        self.token_type = layers.Embed(cfg.type_vocab_size, width,
                                       (axes.TOKEN_TYPES, axes.EMBED_PROJ), embedding_init=init)
        self.norm = layers.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype,
                                     axis_name=axes.EMBED_PROJ)
        self.dropout = layers.Dropout(cfg.dropout_rate, broadcast_dims=cfg.dropout_broadcast_dims)

    def word_table(self) -> Array:
        """The ``[vocab, embedding_size]`` table (float32), e.g. for a tied output layer."""
        return self.word.embedding

    def __call__(
        self,
        tokens: Array,
        token_type_ids: Array | None = None,
        positions: Array | None = None,
        *,
        word_delta: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        length = tokens.shape[1]
        if positions is None:
            if length > cfg.max_positions:
                raise ValueError(
                    f"encoder_input_tokens has length {length} > max_positions "
                    f"{cfg.max_positions}"
                )
            positions = jnp.arange(length)[None, :]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(tokens)
        table = self.word.embedding
        if word_delta is not None:
            # Gradient-disentangled sharing: this network only trains the delta.
            table = jax.lax.stop_gradient(table) + word_delta
        # [batch, length] -> [batch, length, embed_proj]
        x = jnp.take(table, tokens, axis=0)
        x = x + jnp.take(self.position.embedding, positions, axis=0)
        x = x + jnp.take(self.token_type.embedding, token_type_ids, axis=0)
        x = self.norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


class Network(nn.Module):
    """``embeddings_project`` (if the embedding width differs) + the post-LN ``Stack``."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, deterministic: bool = True) -> Array:
        cfg = self.config
        if x.shape[-1] != cfg.d_model:
            # [batch, length, embed_proj] -> [batch, length, embed]
            x = layers.DenseGeneral(
                cfg.d_model, (axes.EMBED_PROJ, axes.EMBED), use_bias=True,
                dtype=cfg.compute_dtype, kernel_init=cfg.kernel_init(), name="embeddings_project",
            )(x)
        x = activation_constraint(x)
        return Stack(cfg, cfg.num_layers, name="stack")(x, mask, deterministic=deterministic)


def encode(embeddings: Embeddings, network: Network, tokens: Array,
           token_type_ids: Array | None = None, segment_ids: Array | None = None,
           positions: Array | None = None, *, word_delta: Array | None = None,
           deterministic: bool = True) -> Array:
    """The one ELECTRA encoder path: embed -> attention mask -> network.

    Every model below (discriminator, generator, classifier, the joint pretraining module)
    runs its encoder through here. Returns ``[batch, length, d_model]``.
    """
    x = embeddings(tokens, token_type_ids, positions, word_delta=word_delta,
                   deterministic=deterministic)
    return network(x, encoder_mask(tokens, segment_ids), deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# Single-network models (HF-compatible layouts; also the BERT/MLM baseline and fine-tuning).
# ---------------------------------------------------------------------------------------------
class ElectraDiscriminator(nn.Module):
    """Embeddings + Network + replaced-token head: ``[batch, length]`` float32 logits."""

    config: TransformerConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.network = Network(self.config)
        self.head = DiscriminatorHead(self.config)

    def encode(self, encoder_input_tokens, encoder_token_type_ids=None, encoder_segment_ids=None,
               encoder_positions=None, deterministic: bool = True) -> Array:
        return encode(self.embeddings, self.network, encoder_input_tokens, encoder_token_type_ids,
                      encoder_segment_ids, encoder_positions, deterministic=deterministic)

    def __call__(self, encoder_input_tokens: Array, encoder_token_type_ids: Array | None = None,
                 encoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
                 deterministic: bool = True) -> Array:
        h = self.encode(encoder_input_tokens, encoder_token_type_ids, encoder_segment_ids,
                        encoder_positions, deterministic)
        return self.head(h)


class ElectraGenerator(nn.Module):
    """Embeddings + Network + MLM head tied to the word table.

    With ``masked_positions`` [batch, num_masked] the head runs only there ->
    ``[batch, num_masked, vocab]``; without, over every position -> ``[batch, length, vocab]``.
    """

    config: TransformerConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.network = Network(self.config)
        self.head = MlmHead(self.config, embedding_width(self.config))

    def encode(self, encoder_input_tokens, encoder_token_type_ids=None, encoder_segment_ids=None,
               encoder_positions=None, deterministic: bool = True) -> Array:
        return encode(self.embeddings, self.network, encoder_input_tokens, encoder_token_type_ids,
                      encoder_segment_ids, encoder_positions, deterministic=deterministic)

    def __call__(self, encoder_input_tokens: Array, masked_positions: Array | None = None,
                 encoder_token_type_ids: Array | None = None,
                 encoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
                 deterministic: bool = True) -> Array:
        h = self.encode(encoder_input_tokens, encoder_token_type_ids, encoder_segment_ids,
                        encoder_positions, deterministic)
        if masked_positions is not None:
            h = gather_positions(h, masked_positions)
        return self.head(h, self.embeddings.word_table())


MlmEncoder = ElectraGenerator  # the paper's BERT baseline: a generator at discriminator size


class ElectraClassifier(nn.Module):
    """Fine-tuning: discriminator encoder + a [CLS] head -> ``[batch, classes]`` float32.

    Initialise ``embeddings`` / ``network`` from a discriminator's params (same names).
    """

    config: TransformerConfig
    num_classes: int
    classifier_dropout: float = 0.1
    head_style: str = "electra"  # heads.CLASSIFIER_STYLES: the reference code's or HF's

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.network = Network(self.config)
        self.head = ClassificationHead(self.config, self.num_classes, self.classifier_dropout,
                                       self.head_style)

    def __call__(self, encoder_input_tokens: Array, encoder_token_type_ids: Array | None = None,
                 encoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
                 deterministic: bool = True) -> Array:
        h = encode(self.embeddings, self.network, encoder_input_tokens, encoder_token_type_ids,
                   encoder_segment_ids, encoder_positions, deterministic=deterministic)
        return self.head(h, deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# Generator + discriminator for pretraining.
# ---------------------------------------------------------------------------------------------
class Electra(nn.Module):
    """Generator and discriminator sharing embeddings as ``config.embedding_sharing`` says.

    Param tree: ``embeddings`` (shared; the discriminator's when untied),
    ``generator_embeddings`` (untied only), ``discriminator_word_delta`` (gdes only),
    ``discriminator`` / ``generator`` (each a ``Network``; no ``generator`` when "all"),
    ``discriminator_head``, ``generator_head``, ``main_mlm_head`` (``config.main_mlm_head``).
    """

    config: ElectraConfig

    def setup(self):
        cfg = self.config
        disc, gen = cfg.discriminator, cfg.generator_config()
        self.embeddings = Embeddings(disc)
        if cfg.embedding_sharing == "untied":
            self.generator_embeddings = Embeddings(gen)
        if cfg.embedding_sharing == "gdes":
            self.discriminator_word_delta = self.param(
                "discriminator_word_delta",
                nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB, axes.EMBED_PROJ)),
                (disc.vocab_size, cfg.embedding_size),
                jnp.float32,
            )
        self.discriminator = Network(disc)
        if cfg.embedding_sharing != "all":
            self.generator = Network(gen)
        self.discriminator_head = DiscriminatorHead(disc)
        self.generator_head = MlmHead(gen, cfg.embedding_size)
        if cfg.main_mlm_head:
            self.main_mlm_head = MlmHead(disc, cfg.embedding_size)

    def _generator_parts(self) -> tuple[Embeddings, Network]:
        sharing = self.config.embedding_sharing
        if sharing == "all":
            return self.embeddings, self.discriminator
        if sharing == "untied":
            return self.generator_embeddings, self.generator
        return self.embeddings, self.generator

    def generator_logits(
        self,
        encoder_input_tokens: Array,
        masked_positions: Array | None,
        encoder_token_type_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """MLM logits ``[batch, num_masked, vocab]`` (``[batch, length, vocab]`` if None)."""
        embeddings, network = self._generator_parts()
        h = encode(embeddings, network, encoder_input_tokens, encoder_token_type_ids,
                   encoder_segment_ids, encoder_positions, deterministic=deterministic)
        if masked_positions is not None:
            h = gather_positions(h, masked_positions)
        return self.generator_head(h, embeddings.word_table())

    def discriminator_logits(
        self,
        encoder_input_tokens: Array,
        encoder_token_type_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Replaced-token logits ``[batch, length]`` float32."""
        h = self._discriminator_hidden(encoder_input_tokens, encoder_token_type_ids,
                                       encoder_segment_ids, encoder_positions, deterministic)
        return self.discriminator_head(h)

    def _discriminator_hidden(self, tokens, token_type_ids, segment_ids, positions,
                              deterministic) -> Array:
        delta = (self.discriminator_word_delta
                 if self.config.embedding_sharing == "gdes" else None)
        return encode(self.embeddings, self.discriminator, tokens, token_type_ids, segment_ids,
                      positions, word_delta=delta, deterministic=deterministic)

    def main_logits(
        self,
        encoder_input_tokens: Array,
        masked_positions: Array | None,
        encoder_token_type_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, Array]:
        """The discriminator network's MLM logits and replaced/copy logits, one encoder pass.

        Needs ``config.main_mlm_head``. Returns ``([batch, num_masked, vocab], [batch, length])``
        (MLM logits ``[batch, length, vocab]`` when ``masked_positions`` is None).
        """
        if not self.config.main_mlm_head:
            raise ValueError("Electra.main_logits needs ElectraConfig.main_mlm_head=True")
        h = self._discriminator_hidden(encoder_input_tokens, encoder_token_type_ids,
                                       encoder_segment_ids, encoder_positions, deterministic)
        rtd = self.discriminator_head(h)
        if masked_positions is not None:
            h = gather_positions(h, masked_positions)
        table = self.embeddings.word_table()
        if self.config.embedding_sharing == "gdes":
            table = jax.lax.stop_gradient(table) + self.discriminator_word_delta
        return self.main_mlm_head(h, table), rtd

    def __call__(
        self,
        encoder_input_tokens: Array,
        masked_positions: Array | None = None,
        encoder_token_type_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, Array]:
        """Both networks on the same tokens (used by ``init``): (generator, discriminator)."""
        extra = (encoder_token_type_ids, encoder_segment_ids, encoder_positions, deterministic)
        gen = self.generator_logits(encoder_input_tokens, masked_positions, *extra)
        if self.config.main_mlm_head:  # touch the extra head too, so init creates it
            return gen, self.main_logits(encoder_input_tokens, masked_positions, *extra)[1]
        return gen, self.discriminator_logits(encoder_input_tokens, *extra)


# ---------------------------------------------------------------------------------------------
# Splitting joint params into the single-network layouts (export, fine-tuning).
# ---------------------------------------------------------------------------------------------
def discriminator_params(config: ElectraConfig, params: dict) -> dict:
    """``Electra`` params -> ``ElectraDiscriminator`` params (gdes delta folded in)."""
    embeddings = dict(params["embeddings"])
    if config.embedding_sharing == "gdes":
        word = dict(embeddings["word"])
        word["embedding"] = word["embedding"] + params["discriminator_word_delta"]
        embeddings["word"] = word
    return {"embeddings": embeddings, "network": params["discriminator"],
            "head": params["discriminator_head"]}


def generator_params(config: ElectraConfig, params: dict) -> dict:
    """``Electra`` params -> ``ElectraGenerator`` params (its own copy of shared tables)."""
    sharing = config.embedding_sharing
    embeddings = params["generator_embeddings" if sharing == "untied" else "embeddings"]
    network = params["discriminator" if sharing == "all" else "generator"]
    return {"embeddings": embeddings, "network": network, "head": params["generator_head"]}
