"""What a run learned, shown on held-out text: the end of the quick start.

- T5: the first validation example with its spans masked by sentinels; the reference targets;
  what the model at step 0 and the trained model write for them (greedy decoding with the KV
  cache), and the teacher-forced cross-entropy / accuracy of both on those targets.
- ELECTRA: the first validation example corrupted by the trained generator (same mask and
  samples for both); which tokens the step-0 and the trained discriminator flag as replaced.

Both take the model at step 0 by re-running the (deterministic) init, so they work after a
resume too. Single-process only (the trainer skips them on multi-host runs); meant for the small
configs, where a second copy of the params is cheap.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

from data import bundled
from data import vocab as vocab_lib
from modeling import decoding, electra
from objectives import losses, rtd


def _pad(row: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((1, length), np.int32)
    out[0, :min(len(row), length)] = row[:length]
    return out


def _decode(sp: spm.SentencePieceProcessor, ids: np.ndarray) -> str:
    """Text of ``ids`` up to EOS, piece by piece (so a span's leading space shows); ids past the
    pieces are T5's sentinels, ``<extra_id_N>`` counting down from the last id (seqio's
    convention, without loading seqio)."""
    ids = [int(i) for i in ids]
    if 1 in ids:  # EOS ends the text
        ids = ids[:ids.index(1)]
    last = sp.get_piece_size() + bundled.EXTRA_IDS - 1
    pieces = []
    for i in ids:
        if i >= sp.get_piece_size():
            pieces.append(f"<extra_id_{last - i}>")
        elif i == sp.unk_id():
            pieces.append(" \u2047 ")  # what sentencepiece's decode shows for unknown text
        elif i != 0:
            pieces.append(sp.id_to_piece(i).replace("\u2581", " "))  # sentencepiece's space
    return "".join(pieces).strip()


def t5_span_filling(model: Any, params: Any, init_params: Any, example: dict[str, np.ndarray],
                    vocab_path: str, inputs_length: int, targets_length: int) -> list[str]:
    """Lines comparing step 0 with the trained model on one held-out span-corruption example."""
    vocab = vocab_lib.load_sentencepiece(vocab_path)
    enc = jnp.asarray(_pad(example["inputs"], inputs_length))
    targets = _pad(example["targets"], targets_length)
    dec_in = jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0))))  # PAD = 0 starts
    weights = jnp.asarray((targets > 0).astype(np.float32))
    greedy = jax.jit(functools.partial(decoding.greedy_decode, model,
                                       max_decode_length=targets_length))

    @jax.jit
    def score(p):
        logits = model.apply({"params": p}, enc, dec_in)
        ce = losses.cross_entropy(logits, jnp.asarray(targets), weights)
        return ce.mean, losses.accuracy(logits, jnp.asarray(targets), weights)

    lines = ["held-out text with masked spans: " + _decode(vocab, example["inputs"]),
             "  reference fill:   " + _decode(vocab, example["targets"])]
    for label, p in (("step 0", init_params), ("trained", params)):
        tokens, _ = greedy(p, enc)
        ce, acc = score(p)
        lines.append(f"  {label + ' fill:':<17} {_decode(vocab, np.asarray(tokens)[0])}")
        lines.append(f"  {'':<17} (cross-entropy {float(ce):.3f} nats/token, "
                     f"accuracy {float(acc):.1%} on the reference fill)")
    return lines


def electra_detection(model: Any, params: Any, init_params: Any,
                      example: dict[str, np.ndarray], vocab_path: str, cfg: rtd.RTDConfig,
                      length: int, key: jax.Array) -> list[str]:
    """Lines showing which replaced tokens the step-0 and trained discriminators catch."""
    vocab = vocab_lib.load_sentencepiece(vocab_path)
    tokens = jnp.asarray(_pad(example["inputs"], length))
    types = jnp.asarray(_pad(example["token_type_ids"], length))
    batch = {"encoder_input_tokens": tokens}

    def generator_fn(masked, positions):
        return model.apply({"params": params}, masked, positions, types,
                           method=electra.Electra.generator_logits)

    _, _, corrupted, labels, _, _ = jax.jit(
        lambda k: rtd.generator_step(k, batch, generator_fn, cfg))(key)
    corrupted, labels = np.asarray(corrupted)[0], np.asarray(labels)[0]
    real = np.asarray(tokens)[0] != cfg.pad_id
    replaced = int(labels[real].sum())
    marked = ""
    for token, replaced_here in zip(corrupted[real], labels[real], strict=True):
        piece = vocab.id_to_piece(int(token)).replace("\u2581", " ")  # sentencepiece's space
        if replaced_here:
            piece = (" " if piece.startswith(" ") else "") + f"[{piece.strip()}]"
        marked += piece
    lines = [f"held-out text, {replaced} of {int(real.sum())} tokens replaced by the generator "
             f"(in [brackets]):", "  " + marked.strip()]

    @jax.jit
    def scores(p):
        return model.apply({"params": p}, jnp.asarray(corrupted[None]), types,
                           method=electra.Electra.discriminator_logits)[0]

    truth = labels[real] == 1
    for label, p in (("step 0", init_params), ("trained", params)):
        logits = np.asarray(scores(p))[real]
        flagged = logits > 0
        hit = int((flagged & truth).sum())
        false = int((flagged & ~truth).sum())
        # Threshold-free: how many replaced tokens are among its `replaced` most suspected.
        suspects = np.argsort(-logits, kind="stable")[:replaced]
        lines.append(f"  {label} discriminator: flags {hit}/{replaced} replaced with {false} "
                     f"false alarms; {int(truth[suspects].sum())}/{replaced} replaced among "
                     f"its top-{replaced} suspects (chance ~{replaced**2 / real.sum():.1f})")
    return lines
