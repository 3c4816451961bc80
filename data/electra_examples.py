"""ELECTRA pretraining examples ``[CLS] A [SEP] B [SEP]`` built from consecutive text.

Semantics of ELECTRA's ``build_pretraining_dataset.ExampleBuilder`` (google-research/electra):

- sentences of a document are appended to the current example until its token count reaches
  the current TARGET length; the sentence that crosses it is still appended, then the example
  is cut (what does not fit is dropped, not carried over). The end of a document also ends the
  current example (the original's blank line between documents);
- with probability 0.1 the example has one segment only (first-segment target 100000), else the
  first segment's target is ``(target_length - 3) // 2``;
- a sentence goes to segment A if A is empty, or A + sentence < A's target, or (B is still empty,
  A is below its target and a fair coin says so); otherwise to B. (As in the original, a short
  sentence after one that went to B can still join A.)
- A is trimmed to ``max_length - 2`` tokens and B to ``max_length - len(A) - 3``;
- after each example, with probability 0.05 the NEXT target length is uniform in
  [5, max_length], else ``max_length`` (short examples, like BERT's short_seq_prob).

Token types: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``. No masking here (it happens on device).

Our corpora hold one document per line, so a document is split into sentences (lines, then
sentence-final punctuation followed by whitespace) and each sentence is tokenized on its own, as
the original tokenizes each line. Randomness: all draws for example x come from
``example_rng(seed, x)``, so the table depends only on (corpus, vocabulary, max_length, seed).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from objectives.span_corruption import example_rng

SINGLE_SEGMENT_PROB = 0.1
RANDOM_LENGTH_PROB = 0.05
MIN_RANDOM_LENGTH = 5
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(document: str) -> list[str]:
    """Lines, then sentences ending in . ! or ? followed by whitespace; blanks dropped."""
    out = []
    for line in document.split("\n"):
        out.extend(s for s in (p.strip() for p in _SENTENCE_END.split(line)) if s)
    return out


@dataclasses.dataclass(frozen=True)
class ElectraExampleTable:
    """All examples of a corpus: ids [n, max_length] (0 padded) and segment lengths [n, 2]."""

    ids: np.ndarray
    segment_lengths: np.ndarray  # [n, 2]: tokens in A and in B, without [CLS]/[SEP]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def example(self, row: int) -> dict[str, np.ndarray]:
        """{"inputs": [CLS] A [SEP] (B [SEP]), "token_type_ids": 0 ... 0 1 ... 1}."""
        a, b = (int(x) for x in self.segment_lengths[row])
        n_a = a + 2
        n = n_a + (b + 1 if b else 0)
        types = np.zeros(n, np.int32)
        types[n_a:] = 1
        return {"inputs": self.ids[row, :n].astype(np.int32), "token_type_ids": types}


def _make_example(sentences: list[np.ndarray], target_length: int, max_length: int,
                  rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Splits accumulated sentences into (A pieces, B pieces); returns the next target length."""
    if rng.random() < SINGLE_SEGMENT_PROB:
        first_target = 100000
    else:
        # -3: [CLS] and two [SEP] are not in the sentences yet.
        first_target = (target_length - 3) // 2
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    n_first = n_second = 0
    for sentence in sentences:
        # Short-circuit order matters: the coin is drawn only when the first two tests fail.
        if (n_first == 0 or n_first + sentence.size < first_target
                or (n_second == 0 and n_first < first_target and rng.random() < 0.5)):
            first.append(sentence)
            n_first += sentence.size
        else:
            second.append(sentence)
            n_second += sentence.size
    if rng.random() < RANDOM_LENGTH_PROB:
        next_target = int(rng.integers(MIN_RANDOM_LENGTH, max_length + 1))
    else:
        next_target = max_length
    return first, second, next_target


def build_table(tokens: np.ndarray, sentence_offsets: np.ndarray, doc_sentence_offsets: np.ndarray,
                max_length: int, cls_id: int, sep_id: int, seed: int) -> ElectraExampleTable:
    """Runs the ExampleBuilder over a tokenized corpus.

    tokens: flat ids of every sentence; sentence i is tokens[sentence_offsets[i]:
    sentence_offsets[i + 1]]; document d holds sentences doc_sentence_offsets[d] ..
    doc_sentence_offsets[d + 1] - 1. Cost: one Python step per sentence (~1 s per 500k).
    """
    if max_length < MIN_RANDOM_LENGTH:
        raise ValueError(f"max_length={max_length} must be >= {MIN_RANDOM_LENGTH}")
    ids: list[np.ndarray] = []
    lengths: list[tuple[int, int]] = []
    target = max_length

    def emit(sentences: list[np.ndarray]) -> None:
        nonlocal target
        first, second, target = _make_example(sentences, target, max_length,
                                              example_rng(seed, len(ids)))
        a = np.concatenate(first)[: max_length - 2] if first else np.zeros(0, tokens.dtype)
        b = np.concatenate(second) if second else np.zeros(0, tokens.dtype)
        b = b[: max(0, max_length - a.size - 3)]
        # [max_length]: [CLS] A [SEP] B [SEP] 0 ... 0
        row = np.zeros(max_length, np.int32)
        row[0] = cls_id
        row[1:1 + a.size] = a
        row[1 + a.size] = sep_id
        if b.size:
            row[2 + a.size:2 + a.size + b.size] = b
            row[2 + a.size + b.size] = sep_id
        ids.append(row)
        lengths.append((a.size, b.size))

    for d in range(len(doc_sentence_offsets) - 1):
        current: list[np.ndarray] = []
        count = 0
        for s in range(int(doc_sentence_offsets[d]), int(doc_sentence_offsets[d + 1])):
            sentence = tokens[sentence_offsets[s]:sentence_offsets[s + 1]]
            current.append(sentence)
            count += sentence.size
            if count >= target:
                emit(current)
                current, count = [], 0
        if count:  # the document boundary ends the example
            emit(current)
    if not ids:
        raise ValueError("the corpus produced no ELECTRA examples (no non-empty sentences)")
    return ElectraExampleTable(np.stack(ids), np.asarray(lengths, np.int32).reshape(-1, 2))
