"""The objectives by name: the one table, resolved once by :func:`build`.

``config.objective.name`` picks a row; the row's family builder makes the
:class:`~objectives.base.Objective` (model, batch spec, loss, examples, reporting) from the
config. The objective decides the model family: the T5 paper's denoising objectives train
``modeling.t5`` models (``config.model.preset`` names a ``t5.PRESETS`` entry), the ELECTRA
paper's objectives train ``modeling.electra`` ones. Nothing outside ``objectives/`` looks an
objective up by name.

| name              | trains  | what                                                       |
|-------------------|---------|------------------------------------------------------------|
| span_corruption   | T5      | T5's final objective (Table 7), noise 15%, mean span 3      |
| iid_replace_spans | T5      | i.i.d. noise, one sentinel per run (Tables 5, 6)            |
| iid_drop_tokens   | T5      | i.i.d. noise dropped from the inputs (Table 5)              |
| bert              | T5      | BERT-style: 90% mask / 10% random, whole text (Tables 4, 5) |
| mass              | T5      | MASS-style: mask tokens, whole text (Table 5)               |
| deshuffle         | T5      | permuted inputs, original targets (Table 4)                 |
| prefix_lm         | T5      | random split: prefix -> rest (Table 4)                      |
| electra           | ELECTRA | replaced token detection (generator + discriminator)        |
| electra_15        | ELECTRA | RTD scored at the 15% masked slots only (Table 5)           |
| mlm               | ELECTRA | the BERT baseline: discriminator-sized MLM (Table 5)        |
| replace_mlm       | ELECTRA | MLM on generator-replaced inputs (Table 5)                  |
| all_tokens_mlm    | ELECTRA | predict every token with a copy gate (Table 5)              |
| classify          | ELECTRA | fine-tuning: classification / regression on a task          |
| text_to_text      | T5      | fine-tuning: teacher forcing on a task, decoded predictions |
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from objectives import denoising, electra_family, finetune, rtd, t5_family
from objectives.base import Objective

__all__ = ["OBJECTIVES", "Objective", "build", "denoiser"]


@dataclasses.dataclass(frozen=True)
class Entry:
    family: str  # "t5" | "electra": which model the objective trains (for docs and errors)
    build: Callable[[Any], Objective]
    denoiser: denoising.Denoiser | None = None  # the host-side recipe of a T5 objective
    finetune: bool = False  # trains on a downstream task (objectives/finetune.py)


def _t5(d: denoising.Denoiser) -> Entry:
    return Entry("t5", functools.partial(t5_family.build, denoiser=d), d)


def _electra(loss: rtd.LossFn, second: str, paper: str) -> Entry:
    variant = electra_family.Variant(loss, second, paper)
    return Entry("electra", functools.partial(electra_family.build, variant=variant))


OBJECTIVES: dict[str, Entry] = {
    **{d.name: _t5(d) for d in denoising.DENOISERS},
    "electra": _electra(rtd.rtd_loss, "discriminator", "ELECTRA"),
    "electra_15": _electra(rtd.electra_15_loss, "discriminator", "Table 5: ELECTRA 15%"),
    "mlm": _electra(rtd.mlm_loss, "none", "Table 5: BERT (MLM)"),
    "replace_mlm": _electra(rtd.replace_mlm_loss, "main_mlm", "Table 5: Replace MLM"),
    "all_tokens_mlm": _electra(rtd.all_tokens_mlm_loss, "all_tokens",
                               "Table 5: All-Tokens MLM"),
    "classify": Entry("electra", finetune.build_classify, finetune=True),
    "text_to_text": Entry("t5", finetune.build_text_to_text, finetune=True),
}


def _entry(name: str) -> Entry:
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective.name={name!r} is not an objective; expected one of "
                         f"{sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def build(config: Any) -> Objective:
    """The objective named by ``config.objective.name``, built from ``config``."""
    return _entry(config.objective.name).build(config)


def denoiser(name: str) -> denoising.Denoiser:
    """The host-side recipe of the T5 objective ``name`` (seqio task registration uses it)."""
    entry = _entry(name)
    if entry.denoiser is None:
        raise ValueError(f"objective {name!r} trains an {entry.family} model and has no "
                         f"denoiser; T5 objectives: {sorted(denoising_names())}")
    return entry.denoiser


def denoising_names() -> tuple[str, ...]:
    return tuple(name for name, entry in OBJECTIVES.items() if entry.denoiser is not None)
