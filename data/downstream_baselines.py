"""Baselines of the bundled downstream tasks, for data/downstream/README.md.

- majority: the most frequent train target, always (classification accuracy; for wn_headword
  the most frequent headword, exact match);
- bag of words: multinomial logistic regression on word counts (lower-cased [a-z0-9]+ words
  seen at least twice in train), L2 strength chosen on validation from a small grid. For a
  sentence pair the features are the counts of sentence1, the counts of sentence2 and, per
  word, whether it occurs in both (a linear model on the two bags alone cannot relate them).

Scored with the tasks' own metric functions (data.finetune). Written with numpy and scipy
(L-BFGS) so the build needs no scikit-learn.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import scipy.optimize
import scipy.sparse

_WORD = re.compile(r"[a-z0-9]+")
L2_GRID = (1e-3, 1e-4, 1e-5)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def featurize(examples: list[dict], vocab: dict[str, int]) -> scipy.sparse.csr_matrix:
    """-> [examples, features]: counts of sentence1 words, then (pairs) of sentence2 words,
    then (pairs) 1 for each word in both."""
    pair = "sentence2" in examples[0]
    size = len(vocab)
    rows, cols, values = [], [], []
    for i, example in enumerate(examples):
        first = collections.Counter(w for w in words(example["sentence1"]) if w in vocab)
        bags = [(first, 0)]
        if pair:
            second = collections.Counter(w for w in words(example["sentence2"]) if w in vocab)
            both = collections.Counter({w: 1 for w in first.keys() & second.keys()})
            bags += [(second, size), (both, 2 * size)]
        for bag, offset in bags:
            for word, count in bag.items():
                rows.append(i)
                cols.append(offset + vocab[word])
                values.append(float(count))
    n_features = size * (3 if pair else 1)
    return scipy.sparse.csr_matrix((values, (rows, cols)), shape=(len(examples), n_features))


def fit_logistic_regression(x: scipy.sparse.csr_matrix, y: np.ndarray, n_classes: int,
                            l2: float, init: tuple[np.ndarray, np.ndarray] | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Minimizes mean softmax cross-entropy + l2/2 |W|^2 (bias not penalized), from `init`
    (W, b) or zeros; -> (W, b)."""
    n, f = x.shape
    onehot = np.eye(n_classes)[y]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: f * n_classes].reshape(f, n_classes), theta[f * n_classes:]
        # [n, f] @ [f, classes] -> [n, classes]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -np.sum(onehot * log_p) / n + 0.5 * l2 * np.sum(w * w)
        delta = (np.exp(log_p) - onehot) / n
        grad_w = np.asarray(x.T @ delta) + l2 * w
        return loss, np.concatenate([grad_w.ravel(), delta.sum(axis=0)])

    theta0 = np.zeros(f * n_classes + n_classes) if init is None else np.concatenate(
        [init[0].ravel(), init[1]])
    result = scipy.optimize.minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                                     options={"maxiter": 500})
    return result.x[: f * n_classes].reshape(f, n_classes), result.x[f * n_classes:]


def bag_of_words(splits: dict[str, list[dict]]) -> dict[str, float]:
    """-> {"l2", "validation", "test"} accuracy (percent) of the best L2 on validation."""
    from data.finetune import accuracy

    train = splits["train"]
    counts = collections.Counter(w for e in train for k in ("sentence1", "sentence2")
                                 if k in e for w in words(e[k]))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
    labels = sorted({e["target"] for e in train})
    index = {label: i for i, label in enumerate(labels)}
    x = {s: featurize(examples, vocab) for s, examples in splits.items()}
    best: dict[str, float] = {}
    y = np.array([index[e["target"]] for e in train])
    params = None
    for l2 in L2_GRID:  # strongest first: each fit starts from the previous optimum
        params = w, b = fit_logistic_regression(x["train"], y, len(labels), l2, params)
        scores = {"l2": l2}
        for split in ("validation", "test"):
            predictions = [labels[i] for i in np.argmax(x[split] @ w + b, axis=1)]
            targets = [e["target"] for e in splits[split]]
            scores[split] = accuracy(targets, predictions)["accuracy"]
        if not best or scores["validation"] > best["validation"]:
            best = scores
    return best


def nearest_neighbour(splits: dict[str, list[dict]], metric) -> dict[str, float]:
    """The target of the train example whose sentence1 is closest (cosine of tf-idf weighted
    counts, train vocabulary; ties: the first in file order)."""
    train = splits["train"]
    counts = collections.Counter(w for e in train for w in words(e["sentence1"]))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
    x = {s: featurize(examples, vocab) for s, examples in splits.items()}
    document_frequency = np.bincount(x["train"].indices, minlength=len(vocab))
    idf = scipy.sparse.diags(np.log(len(train) / np.maximum(document_frequency, 1)))
    out: dict[str, float] = {}
    for split in ("validation", "test"):
        train_x, query_x = (_unit_rows(x[s] @ idf) for s in ("train", split))
        predictions = []
        for start in range(0, query_x.shape[0], 256):
            # [256, vocab] @ [vocab, train] -> [256, train]
            similarity = (query_x[start : start + 256] @ train_x.T).toarray()
            predictions += [train[i]["target"] for i in np.argmax(similarity, axis=1)]
        targets = [e["target"] for e in splits[split]]
        out[split] = next(iter(metric(targets, predictions).values()))
    return out


def _unit_rows(x: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x


def majority(splits: dict[str, list[dict]], metric) -> dict[str, float | str]:
    """Always the most frequent train target (ties: the smallest string)."""
    counts = collections.Counter(e["target"] for e in splits["train"])
    top = min(counts, key=lambda t: (-counts[t], t))
    out: dict[str, float | str] = {"prediction": top}
    for split in ("validation", "test"):
        targets = [e["target"] for e in splits[split]]
        out[split] = next(iter(metric(targets, [top] * len(targets)).values()))
    return out


def baseline_table(tasks: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """{task: {split: examples}} -> {task: {"majority": ..., "bag_of_words": ...}}."""
    from data.finetune import accuracy, exact_match

    out = {}
    for name, splits in tasks.items():
        if name == "wn_headword":
            out[name] = {"majority": majority(splits, exact_match),
                         "nearest_neighbour": nearest_neighbour(splits, exact_match)}
        else:
            out[name] = {"majority": majority(splits, accuracy),
                         "bag_of_words": bag_of_words(splits)}
    return out
