"""Re-run a table of the T5 or ELECTRA paper: ``python -m launch.reproduce TABLE --scale=...``.

    python -m launch.reproduce t5_table7 --scale=laptop [--seeds=2] [--root=tables/t5_table7]
    python -m launch.reproduce electra_table5 --scale=paper --backend=slurm --dry_run
    python -m launch.reproduce t5_table4 --smoke            # tiny models, about a minute
    python -m launch.reproduce t5_table4 --report --root=DIR  # the table from what has finished

A table is a sweep (``launch/sweep_spec.py``) of two stages: ``pretrain`` trains every row of
the table once per seed under the paper's protocol (equal steps; for ``electra_compute``, a
range of step budgets read against FLOPs), and ``finetune`` fine-tunes each of those runs on the
scale's downstream tasks with the seed it was pretrained with; from-scratch runs of the same
fine-tuning (``scratch`` row) show what pretraining is worth at all. The sweep runs through
``launch.sweep`` (``--backend=local|slurm|tpu_vm``: ``status``, ``retry`` and ``collect`` work
on ``--root`` as for any sweep), then ``ROOT/table.md`` gets the table (mean +- std over seeds of
each task's validation metric, each seed linked to its run folder; the row score is the mean over
tasks, and its difference from the table's baseline row is printed beside the paper's), the
paper's conclusions checked against the cells, ``ROOT/pretraining.png`` (each row's pretraining
curve) and ``ROOT/downstream.png`` (score against pretraining FLOPs).

Scales:

- ``laptop``: the quickstart-sized networks on the bundled corpus, fine-tuned on the bundled
  WordNet tasks (``data/downstream/``); each table is budgeted to finish in about two hours on a
  2-core CPU (README, "Paper tables").
- ``paper``: the paper's model, steps and batch (T5-Base-sized encoder-decoder, 2^19 steps of
  128 x 512 on C4; ELECTRA-Base on ``--text_files``, the user's Wikipedia + BooksCorpus export),
  fine-tuned on GLUE; a sweep for SLURM or TPU VMs, checked with ``--dry_run``.
- ``--smoke``: the laptop table with tiny models and a few steps (the tests run it).

Our downstream tasks are not the paper's GLUE / SuperGLUE columns, so the comparison is of
rankings and of each row's difference from the baseline row, never of absolute scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from configs import common
from data import vocab as vocab_lib
from launch import sweep_spec, sweep_state, sweep_tpu
from launch.sweep_spec import Stage, Sweep, SweepError, named, product, seeds

SCALES = ("laptop", "paper")
FINETUNE_STAGE = "finetune"
SCRATCH = "scratch"


# ---------------------------------------------------------------------------------------------
# The tables.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # the run-name part (letters, digits, ._-)
    label: str  # as the paper's table calls it
    overrides: Mapping[str, Any]  # pretraining config keys (objective and its parameters)
    paper: float | None = None  # the paper's score (the column ``Table.paper_column``)
    steps_fraction: float = 1.0  # of the scale's pretraining steps (the compute curve)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's conclusions about rows ``better`` and ``worse``: ``kind="beats"``:
    ``better`` scores above ``worse``; ``kind="as_good_as_any"``: no other row of the table
    scores significantly above ``better`` (``worse`` unused)."""
    text: str
    better: str
    worse: str = ""
    kind: str = "beats"


# The ELECTRA paper's GLUE metrics (Sec. 3.1): Spearman for STS-B, Matthews for CoLA, accuracy
# for the rest; where a task's main metric (T5's) differs, the ELECTRA tables score this one.
ELECTRA_METRICS = {"glue_mrpc_v002": "accuracy", "glue_qqp_v002": "accuracy",
                   "glue_stsb_v002": "spearman_corrcoef"}


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    family: str  # "t5" | "electra"
    title: str
    paper_column: str  # what the paper's numbers are
    rows: Sequence[Row]
    baseline: str  # the row the differences are taken from
    claims: Sequence[Claim] = ()
    select: str = "last"  # fine-tuning checkpoint scored: "last" | "best" (by validation)
    compute_curve: bool = False  # a claim per FLOP budget instead of per row
    # task -> the metric this table scores it by, where not the task's main (T5's) metric
    metrics: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def _t5(name: str, label: str, objective: str, paper: float, **params: Any) -> Row:
    overrides = {"config.objective.name": objective}
    overrides.update({f"config.objective.{k}": float(v) for k, v in params.items()})
    return Row(name, label, overrides, paper)


def _electra(name: str, label: str, objective: str, paper: float | None = None,
             fraction: float = 1.0) -> Row:
    return Row(name, label, {"config.objective.name": objective}, paper, fraction)


# T5 paper (Raffel et al. 2020): GLUE average of the study's baseline fine-tuning (Tables 4, 6, 7).
_T5_GLUE = "GLUE average, T5 paper"
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("t5_table4", "t5", "T5 Table 4: high-level denoising objectives", _T5_GLUE,
          rows=(_t5("prefix_lm", "Prefix language modeling", "prefix_lm", 80.69),
                _t5("bert", "BERT-style", "bert", 82.96),
                _t5("deshuffle", "Deshuffling", "deshuffle", 73.17)),
          baseline="bert", select="best",
          claims=(Claim("BERT-style denoising beats prefix LM", "bert", "prefix_lm"),
                  Claim("BERT-style denoising beats deshuffling", "bert", "deshuffle"),
                  Claim("prefix LM beats deshuffling", "prefix_lm", "deshuffle"))),
    Table("t5_table6", "t5", "T5 Table 6: i.i.d. corruption rate (replace spans)", _T5_GLUE,
          rows=tuple(_t5(f"rate{round(100 * d)}", f"{round(100 * d)}%", "iid_replace_spans",
                         paper, noise_density=d)
                     for d, paper in ((0.10, 82.82), (0.15, 83.28), (0.25, 83.00),
                                      (0.50, 81.27))),
          baseline="rate15", select="best",
          claims=(Claim("15% is about as good as any rate", "rate15", kind="as_good_as_any"),
                  Claim("50% is worse than 15%", "rate15", "rate50"),
                  Claim("50% is worse than 25%", "rate25", "rate50"),
                  Claim("50% is worse than 10%", "rate10", "rate50"))),
    Table("t5_table7", "t5", "T5 Table 7: span corruption, mean span length at 15%", _T5_GLUE,
          rows=(_t5("iid", "Baseline (i.i.d.)", "iid_replace_spans", 83.28, noise_density=0.15),
                *(_t5(f"span{m}", f"{m}", "span_corruption", paper, noise_density=0.15,
                      mean_noise_span_length=m)
                  for m, paper in ((2, 83.54), (3, 83.49), (5, 83.40), (10, 82.85)))),
          baseline="iid", select="best",
          # The paper's differences here are within its own run-to-run spread (GLUE std 0.235,
          # its Table 1) but for span length 10; its conclusion is "about as good as any".
          claims=(Claim("span length 3 is about as good as any", "span3",
                        kind="as_good_as_any"),
                  Claim("span length 3 beats span length 10", "span3", "span10"),
                  Claim("span length 2 beats span length 10", "span2", "span10"))),
    Table("electra_table5", "electra",
          "ELECTRA Table 5: efficiency analysis (equal steps)", "GLUE dev score, ELECTRA paper",
          rows=(_electra("electra", "ELECTRA", "electra", 85.0),
                _electra("all_tokens_mlm", "All-Tokens MLM", "all_tokens_mlm", 84.3),
                _electra("replace_mlm", "Replace MLM", "replace_mlm", 82.4),
                _electra("electra_15", "ELECTRA 15%", "electra_15", 82.4),
                _electra("mlm", "BERT", "mlm", 82.2)),
          baseline="mlm", metrics=ELECTRA_METRICS,
          claims=(Claim("ELECTRA beats BERT (MLM)", "electra", "mlm"),
                  Claim("ELECTRA beats ELECTRA 15% (learning from all tokens)", "electra",
                        "electra_15"),
                  Claim("ELECTRA beats Replace MLM", "electra", "replace_mlm"),
                  Claim("All-Tokens MLM beats BERT", "all_tokens_mlm", "mlm"))),
    Table("electra_compute", "electra",
          "ELECTRA Figures 1 / 3: downstream score against pretraining FLOPs",
          "the paper plots curves (no table)",
          # MLM's step is cheaper than ELECTRA's (no generator): MLM also runs twice the steps
          # so that ELECTRA's full budget falls inside MLM's measured FLOP range.
          rows=tuple(_electra(f"{obj}_{int(f * 100)}", f"{label}, {f:g} x the steps", obj,
                              fraction=f)
                     for obj, label, fractions in (("electra", "ELECTRA", (0.25, 0.5, 1.0)),
                                                   ("mlm", "BERT (MLM)", (0.25, 0.5, 1.0, 2.0)))
                     for f in fractions),
          baseline="mlm_100", compute_curve=True, metrics=ELECTRA_METRICS,
          claims=(Claim("ELECTRA beats MLM at equal pretraining FLOPs", "electra", "mlm"),)),
)}


# ---------------------------------------------------------------------------------------------
# Scales: what "laptop" and "paper" mean for each family.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Scale:
    pretrain: str  # config spec
    pretrain_fixed: Mapping[str, Any]
    steps: int | None  # pretraining steps (None: the config's; per row x its steps_fraction)
    finetune: str
    finetune_fixed: Mapping[str, Any]
    tasks: Sequence[str]
    seeds: int
    per_task: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


_QUIET = {"config.train.showcase": False, "config.train.tensorboard": False}
_GLUE = ("glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_stsb_v002",
         "glue_qqp_v002", "glue_mnli_v002", "glue_qnli_v002", "glue_rte_v002")
BUCKET = "my-pretrax-bucket"
# The T5 paper's vocabulary (32,000 pieces trained on C4, + 100 extra ids = 32,100 of t5_base's
# 32,128 rows), at the public path T5X reads it from; a copy on local disk works as well.
T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
# --backend=tpu_vm / slurm defaults of the paper-scale sweeps (change project, zone, bucket;
# --set KEY=VALUE overrides any of them).
PAPER_SETTINGS = {
    "tpu_vm": {"tpu.project": "my-project", "tpu.zone": "us-central2-b",
               "tpu.accelerator_type": "v4-32", "tpu.version": "tpu-ubuntu2204-base",
               "tpu.provisioning": "queued_spot",
               "tpu.setup": (sweep_tpu.gcsfuse_setup(BUCKET),),
               "tpu.workdir_root": "/mnt/gcs/tables",
               "env.TFDS_DATA_DIR": f"gs://{BUCKET}/tensorflow_datasets"},
    "slurm": {"slurm.nodes": 2, "slurm.ntasks_per_node": 1, "slurm.gpus_per_node": 8,
              "slurm.time": "7-00:00:00"},
    "local": {},
}
# ... and of their fine-tuning runs (batch 32-128: one node, not the pretraining's two; a v4-8).
# Settings that size a stage's machine: a sweep-wide --set of one sizes pretraining only;
# fine-tuning takes its own (PAPER_FINETUNE_SETTINGS, or --set finetune.KEY=...).
STAGE_RESOURCES = ("tpu.accelerator_type", "slurm.nodes", "slurm.ntasks_per_node",
                   "slurm.gpus_per_node")
PAPER_FINETUNE_SETTINGS = {"slurm": {"slurm.nodes": 1, "slurm.time": "2-00:00:00"},
                           "tpu_vm": {"tpu.accelerator_type": "v4-8"}}
# Paper scale computes in bfloat16 (parameters, norms, softmax statistics, logits and losses
# stay float32): as T5 ran on TPUs (shared/reference/T5.md, "Init"); for ELECTRA, whose
# reference computes in float32, a choice for speed (--set config.model.dtype=float32).
_BF16 = {"config.model.dtype": "bfloat16"}

def scale_of(family: str, scale: str, smoke: bool) -> Scale:
    if smoke:
        pretrain = "configs/t5.py:tiny" if family == "t5" else "configs/electra.py:tiny"
        finetune = f"configs/finetune.py:{family}_tiny"
        # (ELECTRA's linear schedule needs warm-up < steps: 2 steps at the curve's 1/4 budget)
        warmup = {"config.optimizer.warmup_steps": 1} if family == "electra" else {}
        return Scale(pretrain, {**_QUIET, "config.train.eval_every": 6,
                                "config.checkpoint.every": 6, "config.train.log_every": 3,
                                **warmup},
                     6, finetune, {**_QUIET, "config.train.steps": 4,
                                   "config.optimizer.total_steps": 4,
                                   "config.optimizer.warmup_steps": 1,
                                   "config.train.eval_every": 4, "config.checkpoint.every": 4,
                                   "config.train.task_eval_examples": 16},
                     ("wn_lexname",), 1)
    if scale == "laptop" and family == "t5":
        # configs/t5.py:quickstart (16 x 128 tokens per step, rsqrt schedule with its 1,000-step
        # flat start), 1,500 steps; then 600 steps of T5's fine-tuning recipe (Adafactor,
        # constant 1e-3, dropout 0.1, batch 32) on WordNet supersenses, scored on 1,000
        # validation records.
        return Scale("configs/t5.py:quickstart",
                     {**_QUIET, "config.train.eval_every": 500, "config.checkpoint.every": 500},
                     1500, "configs/finetune.py:t5_quickstart",
                     {**_QUIET, "config.train.steps": 600, "config.optimizer.total_steps": 600,
                      "config.train.eval_every": 600, "config.checkpoint.every": 600,
                      "config.train.task_eval_examples": 1000},
                     ("wn_lexname",), 2)
    if scale == "laptop":
        # configs/electra.py:laptop (README, "ELECTRA at laptop scale": temperature 2) at the
        # paper's 15% masking for every row, 1,000 steps of 32 x 128; then 600 steps of the
        # ELECTRA-Small-style GLUE recipe (AdamW, layer-wise decay 0.8, 10% warm-up, batch 32)
        # on two WordNet tasks, scored on 2,000 validation records each.
        return Scale("configs/electra.py:laptop",
                     {**_QUIET, "config.train.eval_every": 250, "config.checkpoint.every": 500,
                      "config.optimizer.warmup_steps": 100, "config.objective.mask_prob": 0.15},
                     1000, "configs/finetune.py:electra_quickstart",
                     {**_QUIET, "config.train.epochs": None, "config.train.steps": 600,
                      "config.optimizer.total_steps": 600, "config.optimizer.warmup_steps": 60,
                      "config.train.eval_every": 600, "config.checkpoint.every": 600},
                     ("wn_lexname", "wn_hypernym"), 2)
    if family == "t5":
        # The T5 paper's study baseline: a BERT-Base-sized encoder-decoder, 2^19 steps of
        # 128 x 512 tokens on C4; fine-tuned 2^18 steps, constant LR 1e-3, the best validation
        # checkpoint (every 5,000 steps) reported. Pretraining without dropout, fine-tuning
        # with 0.1 (shared/reference/T5.md; the v1.0 study pretrained with 0.1:
        # --set config.model.dropout_rate=0.1).
        vocab = {"config.data.vocab_path": T5_VOCABULARY}
        return Scale("configs/t5.py:t5_base",
                     {"config.data.source": "seqio", "config.model.dropout_rate": 0.0,
                      **vocab, **_BF16},
                     2**19, "configs/finetune.py:t5",
                     {"config.model.preset": "t5_base", "config.train.eval_every": 5000,
                      "config.checkpoint.every": 5000, **vocab, **_BF16},
                     _GLUE, 3)
    # ELECTRA-Base with its recipe (configs/electra.py:electra_base); GLUE with the paper's
    # fine-tuning recipe (configs/finetune.py:electra_base), final checkpoint.
    return Scale("configs/electra.py:electra_base", {"config.data.source": "files", **_BF16},
                 None, "configs/finetune.py:electra_base", dict(_BF16), _GLUE, 3,
                 per_task={t: {"config.train.epochs": 10.0}
                           for t in ("glue_rte_v002", "glue_stsb_v002")})


def _with(spec: str, overrides: Mapping[str, Any], where: str) -> Any:
    """The config ``spec`` with the ``config.*`` keys of ``overrides`` applied."""
    config = sweep_spec.load_config(spec)
    for key, value in overrides.items():
        if key.startswith("config."):
            sweep_spec.apply_override(config, key, value, where)
    return config


def _pretrain_overrides(table: Table, row: Row, base: Any, paper: bool,
                        text: Mapping[str, Any]) -> dict[str, Any]:
    """The row's config keys: its objective and parameters, its steps (the base config's, x
    the row's fraction), and for T5 the decoder length its objective needs at the base's
    encoder length (and at paper scale the C4 task that applies it). ``base``: the scale's
    pretraining config with the sweep-wide settings applied."""
    overrides = dict(row.overrides)
    steps = max(1, round(base.train.steps * row.steps_fraction))
    overrides.update({"config.train.steps": steps, "config.optimizer.total_steps": steps})
    if row.steps_fraction != 1 and base.optimizer.warmup_steps >= steps:
        overrides["config.optimizer.warmup_steps"] = max(1, steps // 10)
    if table.family == "t5":
        from objectives import registry

        objective = overrides["config.objective.name"]
        params = {k.rsplit(".", 1)[1]: v for k, v in overrides.items()
                  if k.startswith("config.objective.") and k != "config.objective.name"}
        _, targets_length = registry.denoiser(objective).lengths(base.data.inputs_length,
                                                                 **params)
        overrides["config.data.targets_length"] = targets_length
        if paper:
            from data import tasks

            overrides["config.data.task"] = tasks.c4_task_name(objective, params, register=False)
    elif paper:
        overrides.update(text)
    return overrides


FINETUNE_PREFIX = "finetune."  # --set finetune.config.KEY=VALUE: the fine-tuning stage only


def build_sweep(table_name: str, scale_name: str, n_seeds: int | None = None,
                smoke: bool = False, backend: str = "local", text_files: str = "",
                settings: Mapping[str, Any] | None = None, validation_files: str = "",
                vocab: str = "") -> Sweep:
    """The sweep that re-runs ``table_name`` at ``scale_name`` (see the module docstring).

    ``settings``: sweep-wide ``config.*`` (pretraining), ``finetune.config.*`` (fine-tuning),
    ``slurm.*``, ``tpu.*`` and ``env.*`` keys (both stages)."""
    if table_name not in TABLES:
        raise SweepError(f"table {table_name!r}; expected one of {sorted(TABLES)}")
    if scale_name not in SCALES:
        raise SweepError(f"--scale={scale_name!r}; expected one of {SCALES}")
    if smoke and scale_name != "laptop":
        raise SweepError("--smoke runs the laptop table with tiny models; drop --scale=paper")
    table = TABLES[table_name]
    paper = scale_name == "paper"
    electra_paper = paper and table.family == "electra"
    if electra_paper and not text_files:
        raise SweepError(f"{table_name} at --scale=paper pretrains on your text: pass "
                         "--text_files=GLOB (the paper used Wikipedia + BooksCorpus, one "
                         "document per line or blank-line separated)")
    if electra_paper and not validation_files:
        raise SweepError(f"{table_name} at --scale=paper evaluates pretraining on held-out "
                         "text: pass --validation_files=GLOB (a few MB of the same kind of "
                         "text, not in --text_files)")
    if electra_paper and not vocab:
        raise SweepError(
            f"{table_name} at --scale=paper needs a vocabulary made for your text (the "
            "bundled one has 8,192 pieces fitted to the laptop corpus): pass --vocab=PATH, a "
            "sentencepiece model with [CLS] [SEP] [MASK], e.g. from python -m data.vocab "
            "--input=GLOB --output_prefix=DIR/spm --vocab_size=30464 --sample_pieces="
            f"{vocab_lib.PAPER_SAMPLE_PIECES} (pieces of <= 1,000 characters; sentencepiece "
            "takes ~20 bytes per character to train: ~6 GB; 30,464: the largest multiple of "
            "128 that fits ELECTRA-Base's 30,522 rows)")
    if not electra_paper and (validation_files or vocab):
        raise SweepError("--validation_files and --vocab are for the ELECTRA tables at "
                         "--scale=paper (the T5 tables read C4 and T5's vocabulary)")
    text = {"config.data.train_files": text_files,
            "config.data.validation_files": validation_files,
            "config.data.vocab_path": vocab} if electra_paper else {}
    scale = scale_of(table.family, scale_name, smoke)
    n = scale.seeds if n_seeds is None else n_seeds
    if n < 1:
        raise SweepError(f"--seeds={n}: at least 1 (2 or more to test the paper's conclusions)")
    settings = dict(settings or {})
    tuning = {k[len(FINETUNE_PREFIX):]: v for k, v in settings.items()
              if k.startswith(FINETUNE_PREFIX)}
    shared = {k: v for k, v in settings.items() if not k.startswith(FINETUNE_PREFIX)}
    steps = {"config.train.steps": scale.steps} if scale.steps else {}
    fixed = {**scale.pretrain_fixed, **steps, **(PAPER_SETTINGS[backend] if paper else {}),
             **shared}
    base = _with(scale.pretrain, fixed, "--set")
    rows = named({row.name: _pretrain_overrides(table, row, base, paper, text)
                  for row in table.rows})
    tasks = named({task: {"config.data.task": task, **scale.per_task.get(task, {})}
                   for task in scale.tasks})
    # Fine-tuning's settings, later layers winning: the backend's paper-scale defaults, the
    # fine-tuning defaults (one node), the user's sweep-wide settings but for the size of the
    # machine (STAGE_RESOURCES: --set slurm.nodes=4 is for pretraining), then finetune.*.
    def settings_of(keys: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in keys.items()
                if not k.startswith("config.") and k not in STAGE_RESOURCES}

    finetune_fixed = {**scale.finetune_fixed,
                      **(settings_of(PAPER_SETTINGS[backend]) if paper else {}),  # (its TPU type
                      # and nodes come from the fine-tuning defaults below)
                      **(PAPER_FINETUNE_SETTINGS.get(backend, {}) if paper else {}),
                      **settings_of(shared),
                      **({"config.data.vocab_path": vocab} if electra_paper else {}), **tuning}
    return Sweep(
        name=f"{table_name}_{'smoke' if smoke else scale_name}", config=scale.pretrain,
        fixed=fixed, axes=product(rows, seeds(n)),
        stages=(Stage(FINETUNE_STAGE, scale.finetune, fixed=finetune_fixed, axes=tasks,
                      inherit=("config.seed",),
                      controls=product(named({SCRATCH: {}}), seeds(n))),))


# ---------------------------------------------------------------------------------------------
# Reusing runs another table already made.
# ---------------------------------------------------------------------------------------------
REUSED = "reused.json"  # in a copied run's job dir: where it was copied from, and when
_NOT_COPIED = {"lock.json", os.path.join(sweep_state.JOB_DIR, "job.json"),
               os.path.join(sweep_state.JOB_DIR, "jobs.jsonl")}


def _config_of(path: str) -> dict[str, Any] | None:
    path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _job_files_of(source: str) -> Any:
    """copytree's ``ignore``: the source's lock and job records (the copy has no job)."""
    return lambda folder, names: [n for n in names if os.path.relpath(
        os.path.join(folder, n), source) in _NOT_COPIED]


def _link_or_copy(source: str, target: str) -> None:
    """Checkpoint files (never changed once committed) are hard-linked where the filesystem
    allows, so a reused run costs no disk for them; everything else is copied."""
    if f"{os.sep}checkpoints{os.sep}" in source:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def _env_of(run: Any) -> dict[str, Any]:
    """The settings that can change what a run computes (env.*: e.g. XLA flags)."""
    return {k: v for k, v in run.settings.items() if k.startswith("env.")}


def reuse_finished(runs: Sequence[Any], sources: Sequence[str],
                   log: Any = print) -> dict[str, str]:
    """Copies into this sweep each finished run of the table roots ``sources`` that is one of
    its runs: the same resolved config and env.* settings, a fine-tuning run's ``init_from``
    read as the run its parent was copied from (so a fine-tune is reused only on top of a
    reused pretraining run). Runs match by what they compute, never by name. Tables share rows
    (T5 Table 6's 15% is Table 7's i.i.d.; ELECTRA Table 5's ELECTRA and BERT rows are the
    compute curve's full budgets; the from-scratch runs are in every table). A run whose
    trainer rewrote its config.json (fine-tuning by epochs) does not match and runs again.

    A copy keeps the run's metrics, checkpoints (hard-linked where possible) and log, gets this
    sweep's config.json (which differs at most in ``init_from``: a copy of the parent it names)
    and records its source in ``sweep/reused.json``. It is made in a temporary folder and
    renamed into place, so an interrupted copy is never taken for a finished run. Runs already
    started here are left alone. Returns {run name: source run directory}."""
    finished: list[tuple[dict[str, Any], dict[str, Any], str, str]] = []
    for source in sources:
        manifest, source_runs = sweep_state.read_manifest(source)
        for run in source_runs:
            config = _config_of(run.local_dir)
            if config is not None and sweep_state.is_done(run):
                finished.append((config, _env_of(run), run.workdir, manifest["name"]))
    copied: dict[str, str] = {}  # run -> its source, copied now or by an earlier invocation
    reused: list[str] = []  # copied now
    workdirs = {run.name: run.workdir for run in runs}
    for run in sorted(runs, key=lambda r: r.after is not None):  # parents first
        if sweep_state.started(run):
            record = os.path.join(sweep_state.job_dir(run), REUSED)
            if os.path.isfile(record):  # copied by an earlier invocation: its children may be
                with open(record) as f:
                    copied[run.name] = json.load(f)["source"]
            continue
        want = json.loads(common.config_json(run.resolved))
        if run.after is not None:
            if run.after not in copied or want["train"]["init_from"] != workdirs[run.after]:
                continue
            want["train"]["init_from"] = copied[run.after]
        match = next(((path, table) for config, env, path, table in finished
                      if config == want and env == _env_of(run)), None)
        if match is None:
            continue
        path, table = match
        tmp = run.workdir + ".reuse-tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # an earlier copy that was interrupted
        shutil.copytree(path, tmp, ignore=_job_files_of(path), copy_function=_link_or_copy)
        common.write_config(run.resolved, tmp)
        os.makedirs(os.path.join(tmp, sweep_state.JOB_DIR), exist_ok=True)
        with open(os.path.join(tmp, sweep_state.JOB_DIR, REUSED), "w") as f:
            json.dump({"source": path, "table": table,
                       "date": time.strftime("%Y-%m-%d %H:%M")}, f)
        if os.path.isdir(run.workdir):  # expanded before, never started: its config only
            shutil.rmtree(run.workdir)
        os.rename(tmp, run.workdir)
        copied[run.name] = path
        reused.append(run.name)
        log(f"{run.name}: reused {path}")
    return {name: copied[name] for name in reused}


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------
_SWEEP_FILE = '''"""Written by launch.reproduce: {table} at {scale} (expanding it again
gives the same runs)."""

from launch import reproduce


def get_sweep():
    return reproduce.build_sweep({args})
'''


def _parse_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SweepError(f"--set {text!r}: expected KEY=VALUE, e.g. tpu.project=my-project")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    from launch import reproduce_report as report_lib  # (it imports this module)

    parser = argparse.ArgumentParser(prog="python -m launch.reproduce",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--scale", choices=SCALES, default="laptop")
    parser.add_argument("--backend", choices=("local", "slurm", "tpu_vm"), default="local")
    parser.add_argument("--seeds", type=int, help="pretraining seeds per row (default: the "
                        "scale's: 2 at laptop scale, 3 at paper scale)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps")
    parser.add_argument("--root", help="the sweep's directory (default tables/TABLE_SCALE)")
    parser.add_argument("--text_files", default="",
                        help="ELECTRA at paper scale: the pretraining text (a glob)")
    parser.add_argument("--validation_files", default="",
                        help="ELECTRA at paper scale: held-out text for pretraining's "
                             "validation (a glob)")
    parser.add_argument("--vocab", default="",
                        help="ELECTRA at paper scale: the sentencepiece model made for the text")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweep-wide override or setting (config.*, slurm.*, tpu.*, "
                             "env.*), e.g. --set tpu.project=my-project")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the runs and their commands; write and start nothing")
    parser.add_argument("--report", action="store_true",
                        help="only write the table and figures from the runs finished so far")
    parser.add_argument("--export", metavar="DIR",
                        help="after the report, copy the table, figures and each run's config "
                             "and metrics (no checkpoints) to DIR, e.g. docs/tables/NAME")
    parser.add_argument("--against", metavar="DIR",
                        help="after the report, compare every cell with a committed table "
                             "(e.g. docs/tables/t5_table7_laptop)")
    parser.add_argument("--reuse", action="append", default=[], metavar="ROOT",
                        help="local: copy in the finished runs of another table's --root that "
                             "this table would run with the same config (repeatable)")
    parser.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    parser.add_argument("--execute", action="store_true", help="tpu_vm: run the scripts")
    parser.add_argument("--git_url", help="tpu_vm: the repository the workers install")
    parser.add_argument("--git_ref", help="tpu_vm: the commit they install")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    label = "smoke" if args.smoke else args.scale
    root = os.path.abspath(args.root or os.path.join("tables", f"{args.table}_{label}"))
    if args.report:
        print(report_lib.report(root, args.table))
        _after_report(root, args)
        return 0
    settings = dict(_parse_setting(s) for s in args.set)
    call = dict(table_name=args.table, scale_name=args.scale, n_seeds=args.seeds,
                smoke=args.smoke, backend=args.backend, text_files=args.text_files,
                settings=settings)
    if args.validation_files or args.vocab:  # only when given: the table_sweep.py files of
        # sweeps expanded before these flags existed (docs/tables) stay what today's code writes
        call.update(validation_files=args.validation_files, vocab=args.vocab)
    # Fails here, before anything is written, on a bad table, key or value.
    runs = sweep_spec.expand(build_sweep(**call), root, "launch.reproduce")
    if args.reuse and (args.backend != "local" or args.dry_run):
        raise SweepError("--reuse copies finished runs on this machine: use it with "
                         "--backend=local and without --dry_run")
    for source in args.reuse:
        if not os.path.isfile(os.path.join(source, sweep_state.MANIFEST)):
            raise SweepError(f"--reuse={source}: no {sweep_state.MANIFEST} there (expected the "
                             "--root of another table's sweep)")
    if (args.seeds or 2) < 2:
        print("WARNING: one seed per row: every conclusion will read 'inconclusive'",
              file=sys.stderr)
    from launch import sweep

    sweep_file = os.path.join(root, "table_sweep.py")
    flags = [f"--sweep={sweep_file}", f"--root={root}", f"--backend={args.backend}",
             f"--parallel={args.parallel}", *(["--execute"] if args.execute else []),
             *([f"--git_url={args.git_url}"] if args.git_url else []),
             *([f"--git_ref={args.git_ref}"] if args.git_ref else [])]
    if args.dry_run:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            sweep_file = os.path.join(tmp, "table_sweep.py")
            _write_sweep_file(sweep_file, args, call)
            flags[0] = f"--sweep={sweep_file}"
            return sweep.main(["launch", *flags, "--dry_run"])
    os.makedirs(root, exist_ok=True)
    if args.reuse:
        reused = reuse_finished(runs, [os.path.abspath(r) for r in args.reuse])
        print(f"reused {len(reused)} of {len(runs)} runs from {', '.join(args.reuse)}")
    _write_sweep_file(sweep_file, args, call)
    start = time.time()
    code = sweep.main(["launch", *flags])
    if args.backend != "local":
        print(f"when the runs are done: python -m launch.reproduce {args.table} --report "
              f"--root={root}")
        return code
    _record_wall(root, time.time() - start)
    print(report_lib.report(root, args.table))
    print(f"wrote {root}/table.md, pretraining.png, downstream.png")
    _after_report(root, args)
    return code


def _after_report(root: str, args: argparse.Namespace) -> None:
    from launch import reproduce_report as report_lib

    if args.export:
        print(f"exported {len(report_lib.export(root, args.export))} files to {args.export}")
    if args.against:
        print(report_lib.against(root, args.against))


def _write_sweep_file(path: str, args: argparse.Namespace, call: dict[str, Any]) -> None:
    with open(path, "w") as f:
        f.write(_SWEEP_FILE.format(table=args.table, scale="smoke" if args.smoke else args.scale,
                                   args=", ".join(f"{k}={v!r}" for k, v in call.items())))


def _record_wall(root: str, seconds: float) -> None:
    """Appends this invocation's wall time and CPU to ROOT/reproduce.json."""
    from launch import bench

    path = os.path.join(root, "reproduce.json")
    history = []
    if os.path.isfile(path):
        with open(path) as f:
            history = json.load(f)
    history.append({"date": time.strftime("%Y-%m-%d %H:%M"), "wall_seconds": round(seconds),
                    "cpu": bench.cpu_description()})
    with open(path, "w") as f:
        json.dump(history, f, indent=2)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SweepError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
