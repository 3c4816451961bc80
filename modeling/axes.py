"""Every logical axis name in pretrax, declared once.

Parameters carry *weight* names (``EMBED``, ``MLP``...); activations at block boundaries carry
*activation* names (``ACT_BATCH``...). Keeping the two apart lets a rule set shard a weight's
``embed`` dimension over ``fsdp`` (ZeRO-3) while the activations' ``embed`` stays replicated.
Rule presets that map these names onto the mesh axes live in ``launch/mesh.py``; Adafactor's
factoring (``FACTOR_RULES`` below) is driven by the same weight names.
"""

# ---------------------------------------------------------------------------------------------
# Mesh axes (sizes come from config.mesh).
# ---------------------------------------------------------------------------------------------
DATA = "data"
FSDP = "fsdp"
MODEL = "model"
MESH_AXES = (DATA, FSDP, MODEL)

# ---------------------------------------------------------------------------------------------
# Weight axes.
# ---------------------------------------------------------------------------------------------
VOCAB = "vocab"  # token embedding rows / logits columns
EMBED = "embed"  # model width (d_model / hidden)
EMBED_PROJ = "embed_proj"  # ELECTRA's factorized embedding width (embedding_size)
MLP = "mlp"  # feed-forward hidden width
HEADS = "heads"  # attention heads
KV = "kv"  # per-head width (d_kv / head_dim)
RELPOS_BUCKETS = "relpos_buckets"  # T5 relative position buckets
ABSPOS = "abspos"  # learned absolute positions (ELECTRA/BERT)
TOKEN_TYPES = "token_types"  # BERT token-type (segment A/B) embeddings
CLASSES = "classes"  # classification / discriminator output units
LAYERS = "layers"  # the stacked axis added by nn.scan

# ---------------------------------------------------------------------------------------------
# Activation axes.
# ---------------------------------------------------------------------------------------------
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_VOCAB = "activation_vocab"

WEIGHT_AXES = (VOCAB, EMBED, EMBED_PROJ, MLP, HEADS, KV, RELPOS_BUCKETS, ABSPOS, TOKEN_TYPES,
               CLASSES, LAYERS)
ACTIVATION_AXES = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS, ACT_KV, ACT_VOCAB)
ALL_AXES = WEIGHT_AXES + ACTIVATION_AXES

# ---------------------------------------------------------------------------------------------
# Adafactor factoring by logical axis (T5X convention): a 2-D-or-more weight keeps a factored
# second moment over its ROW axis and its COLUMN axis; NONE axes are never factored over.
# ---------------------------------------------------------------------------------------------
ROW = "row"
COLUMN = "column"
NONE = "none"
FACTOR_RULES = {
    VOCAB: COLUMN,
    EMBED: ROW,
    EMBED_PROJ: ROW,
    MLP: COLUMN,
    HEADS: COLUMN,
    KV: COLUMN,
    RELPOS_BUCKETS: NONE,
    ABSPOS: NONE,
    TOKEN_TYPES: NONE,
    CLASSES: COLUMN,
    LAYERS: NONE,
}
