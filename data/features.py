"""Feature conversion with packing, in NumPy: examples -> the model's batch features.

The packer reproduces seqio's ``trim_and_pack_dataset`` (the tf-ops path that
``EncDecFeatureConverter(pack=True)`` uses) exactly, so the fast pipeline and seqio agree bitwise
(tests/test_tasks.py checks it against seqio itself):

- examples are taken in GROUPS of ``max(lengths.values())`` consecutive examples (seqio's
  ``padded_batch`` before packing); a partially filled row is flushed at the end of each group;
- within a group, packing is greedy first-come: an example goes into the open row if every
  feature still fits, otherwise the open row is written out and a new one starts;
- a feature's length is its number of nonzero ids (seqio pads the group with 0 and keeps the
  nonzero prefix), truncated to the feature's length;
- ``<key>_segment_ids = cumsum(<key>_positions == 0) * (<key> != 0)``, positions restart at 0.

Batch keys follow seqio's converters: T5 (EncDec) ``encoder_input_tokens``,
``decoder_target_tokens``, ``decoder_input_tokens``, ``decoder_loss_weights`` and, packed,
``encoder_segment_ids``, ``decoder_segment_ids``, ``encoder_positions``, ``decoder_positions``;
ELECTRA (encoder-only) ``encoder_input_tokens``, ``encoder_token_type_ids``,
``encoder_segment_ids``, ``encoder_positions``. All int32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ENCDEC_KEYS: tuple[str, ...] = (
    "encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
    "decoder_loss_weights", "encoder_segment_ids", "decoder_segment_ids",
    "encoder_positions", "decoder_positions")
ENCODER_KEYS: tuple[str, ...] = (
    "encoder_input_tokens", "encoder_token_type_ids", "encoder_segment_ids",
    "encoder_positions")
# ELECTRA's token types ride along with "inputs": same length, same slots.
ALIGNED_FEATURES: dict[str, str] = {"token_type_ids": "inputs"}


def group_size(lengths: Mapping[str, int]) -> int:
    """How many consecutive examples seqio packs together (its padded_batch size)."""
    return max(lengths.values())


def _check_lengths(lengths: Mapping[str, int]) -> None:
    if not lengths:
        raise ValueError("lengths must name at least one feature, e.g. {'inputs': 512}")
    for key, length in lengths.items():
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"lengths[{key!r}]={length!r} must be an int >= 1")


def _column(examples: Sequence[Mapping[str, np.ndarray]], key: str,
            ) -> tuple[np.ndarray, np.ndarray]:
    """(all values of ``key`` end to end, each example's size)."""
    arrays = []
    for example in examples:
        if key not in example:
            raise ValueError(f"example is missing feature {key!r}; it has {sorted(example)}")
        value = np.asarray(example[key])
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise ValueError(f"feature {key!r} must be a 1-D integer array, got shape "
                             f"{value.shape} dtype {value.dtype}")
        arrays.append(value)
    sizes = np.fromiter(map(len, arrays), np.int64, len(arrays))
    return np.concatenate(arrays).astype(np.int32, copy=False), sizes


def _starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def pack_group(examples: Sequence[Mapping[str, np.ndarray]],
               lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Packs ONE group of examples as seqio does: {key, key_segment_ids, key_positions} rows.

    Returns int32 arrays [rows, lengths[key]] (plus aligned features such as
    ``token_type_ids``, which follow their base feature's slots and segment ids).
    """
    _check_lengths(lengths)
    if not examples:
        raise ValueError("pack_group needs at least one example")
    keys = list(lengths)
    aligned = {a: b for a, b in ALIGNED_FEATURES.items() if b in lengths and a in examples[0]}
    columns, kept = {}, {}
    for k in keys + list(aligned):
        columns[k] = _column(examples, k)
    for k in keys:
        flat, sizes = columns[k]
        # seqio keeps the nonzero prefix: an example's length is its count of nonzero ids.
        nonzero = np.add.reduceat(flat != 0, _starts(sizes)) if flat.size else sizes * 0
        kept[k] = np.minimum(np.where(sizes > 0, nonzero, 0), lengths[k])
    for a, base in aligned.items():
        kept[a] = kept[base]
    # Greedy first-come assignment on plain ints: row and column offset of every example.
    n = len(examples)
    row_of, col_of = {k: np.zeros(n, np.int64) for k in keys}, {k: np.zeros(n, np.int64)
                                                               for k in keys}
    sizes_by_key = [(k, kept[k].tolist(), lengths[k]) for k in keys]
    row, used = 0, dict.fromkeys(keys, 0)
    for i in range(n):
        if i and any(used[k] + sizes[i] > length for k, sizes, length in sizes_by_key):
            row, used = row + 1, dict.fromkeys(keys, 0)
        for k, sizes, _ in sizes_by_key:
            row_of[k][i], col_of[k][i] = row, used[k]
            used[k] += sizes[i]
    num_rows = row + 1
    out: dict[str, np.ndarray] = {}
    for k in keys + list(aligned):
        base = aligned.get(k, k)
        flat, sizes = columns[k]
        take = kept[k]
        if not np.array_equal(take, sizes):
            # [sum sizes] -> [sum take]: drop each example's tail beyond its kept prefix.
            within = np.arange(flat.size) - np.repeat(_starts(sizes), sizes)
            flat = flat[within < np.repeat(take, sizes)]
        # Token t of example i goes to row row_of[i], column col_of[i] + t.
        positions = np.arange(flat.size) - np.repeat(_starts(take), take)
        rows = np.repeat(row_of[base], take)
        cols = np.repeat(col_of[base], take) + positions
        values = np.zeros((num_rows, lengths[base]), np.int32)
        values[rows, cols] = flat
        out[k] = values
        if k not in aligned:
            out[k + "_positions"] = np.zeros_like(values)
            out[k + "_positions"][rows, cols] = positions
    for k in keys:
        # seqio's formula: a new segment wherever a position is 0, masked to real tokens.
        starts = (out[k + "_positions"] == 0).astype(np.int32)
        out[k + "_segment_ids"] = np.cumsum(starts, axis=1, dtype=np.int32) * (out[k] != 0)
    return out


def pack_examples(examples: Sequence[Mapping[str, np.ndarray]],
                  lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """seqio's trim_and_pack over a whole list: consecutive groups of ``group_size`` examples."""
    size = group_size(lengths)
    groups = [pack_group(examples[i:i + size], lengths) for i in range(0, len(examples), size)]
    if not groups:
        raise ValueError("pack_examples needs at least one example")
    return {k: np.concatenate([g[k] for g in groups]) for k in groups[0]}


def pad_examples(examples: Sequence[Mapping[str, np.ndarray]],
                 lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """No packing: one example per row, trimmed and zero padded (seqio's trim_and_pad)."""
    _check_lengths(lengths)
    out: dict[str, np.ndarray] = {}
    names = list(lengths) + [a for a, b in ALIGNED_FEATURES.items()
                             if b in lengths and examples and a in examples[0]]
    for k in names:
        length = lengths[ALIGNED_FEATURES.get(k, k)]
        # [examples, length]
        values = np.zeros((len(examples), length), np.int32)
        for r, example in enumerate(examples):
            v = np.asarray(example[k])[:length]
            values[r, : v.size] = v
        out[k] = values
    return out


def shift_right(targets: np.ndarray, segment_ids: np.ndarray | None = None,
                bos_id: int = 0) -> np.ndarray:
    """Decoder inputs: targets shifted right, ``bos_id`` at the start of every packed segment."""
    # [batch, length] -> [batch, length]
    shifted = np.zeros_like(targets)
    shifted[:, 1:] = targets[:, :-1]
    shifted[:, 0] = bos_id
    if segment_ids is not None:
        prev = np.zeros_like(segment_ids)
        prev[:, 1:] = segment_ids[:, :-1]
        # A segment start (or the first padding slot) must not see the previous example's EOS.
        shifted = np.where(segment_ids == prev, shifted, bos_id).astype(targets.dtype)
    return shifted


def encdec_features(rows: Mapping[str, np.ndarray], packed: bool) -> dict[str, np.ndarray]:
    """{inputs, targets (+ _segment_ids/_positions)} rows -> EncDecFeatureConverter's keys.

    Unpacked rows get segment ids 1 on real tokens and positions 0..n-1 as well, so the model
    always receives the same keys (masks computed from them equal the padding masks).
    """
    inputs, targets = rows["inputs"], rows["targets"]
    if packed:
        extra = {"encoder_segment_ids": rows["inputs_segment_ids"],
                 "decoder_segment_ids": rows["targets_segment_ids"],
                 "encoder_positions": rows["inputs_positions"],
                 "decoder_positions": rows["targets_positions"]}
        decoder_inputs = shift_right(targets, rows["targets_segment_ids"])
    else:
        extra = {"encoder_segment_ids": (inputs != 0).astype(np.int32),
                 "decoder_segment_ids": (targets != 0).astype(np.int32),
                 "encoder_positions": _unpacked_positions(inputs),
                 "decoder_positions": _unpacked_positions(targets)}
        decoder_inputs = shift_right(targets)
    out = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": decoder_inputs,
           "decoder_loss_weights": (targets != 0).astype(np.int32)}
    out.update(extra)
    return {k: np.ascontiguousarray(out[k], dtype=np.int32) for k in ENCDEC_KEYS}


def encoder_features(rows: Mapping[str, np.ndarray], packed: bool) -> dict[str, np.ndarray]:
    """{inputs, token_type_ids (+ inputs_segment_ids/_positions)} -> ELECTRA's encoder keys."""
    inputs = rows["inputs"]
    if packed:
        segment_ids, positions = rows["inputs_segment_ids"], rows["inputs_positions"]
    else:
        segment_ids, positions = (inputs != 0).astype(np.int32), _unpacked_positions(inputs)
    out = {"encoder_input_tokens": inputs, "encoder_token_type_ids": rows["token_type_ids"],
           "encoder_segment_ids": segment_ids, "encoder_positions": positions}
    return {k: np.ascontiguousarray(out[k], dtype=np.int32) for k in ENCODER_KEYS}


def _unpacked_positions(tokens: np.ndarray) -> np.ndarray:
    # [batch, length]: 0..n-1 on real tokens, 0 on padding (as seqio's packed positions).
    return np.where(tokens != 0, np.arange(tokens.shape[1], dtype=np.int32)[None], 0)
