"""Hugging Face <-> pretrax checkpoints.

Import (params only, step 0; train from it with ``--config.train.init_from=OUT`` or directly
with ``--config.train.init_from=HF_DIR``)::

    python -m launch.convert from_hf HF_DIR OUT

Export the latest (or ``--step``) checkpoint of a run with its tokenizer (the sentencepiece
model and a transformers tokenizer config); the model is rebuilt from the run's resolved
``RUN/config.json``::

    python -m launch.convert to_hf RUN HF_OUT [--step N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import jax
import ml_collections
from flax import linen as nn
from jax.sharding import SingleDeviceSharding

from launch import checkpoint as ckpt_lib
from objectives import registry


def from_hf(hf_dir: str, out: str) -> str:
    """Writes ``OUT/checkpoints/0/state`` with the HF model's params; returns the step dir."""
    from modeling import hf

    model, params = hf.from_hf(hf_dir)
    step_dir = ckpt_lib.save_params(out, params, step=0)
    for name in ("spiece.model", "spm.model"):  # the tokenizer travels with the params
        if os.path.isfile(os.path.join(hf_dir, name)):  # (data.vocab.path_of reads it)
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out, name))
    with open(os.path.join(out, "hf_source.json"), "w") as f:
        json.dump({"hf_dir": os.path.abspath(hf_dir), "model": type(model).__name__}, f)
    return step_dir


def run_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: to_hf needs the resolved config that "
                                "launch.train writes into every run directory")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run_params(run_dir: str, step: int | None = None) -> tuple[Any, Any]:
    """(model, params on one device) of a run's checkpoint (latest unless ``step``)."""
    config = run_config(run_dir)
    objective = registry.build(config)
    shapes = nn.unbox(jax.eval_shape(objective.init_fn, jax.random.key(0))["params"])
    sharding = SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            shapes)
    source = run_dir if step is None else os.path.join(ckpt_lib.checkpoint_dir(run_dir),
                                                       str(step))
    return objective.model, ckpt_lib.load_params(source, abstract)


def to_hf(run_dir: str, out: str, step: int | None = None) -> None:
    """The weights (``config.json`` + ``model.safetensors``) and the tokenizer (sentencepiece model
    + its config, data/hf_tokenizer.py), so ``AutoTokenizer.from_pretrained(out)`` works."""
    from data import hf_tokenizer
    from data import vocab as vocab_lib
    from modeling import hf
    from modeling.t5 import EncoderDecoder

    model, params = load_run_params(run_dir, step)
    hf.to_hf(model, jax.device_get(params), out)
    config = run_config(run_dir)
    write = (hf_tokenizer.write_t5_tokenizer if isinstance(model, EncoderDecoder)
             else hf_tokenizer.write_electra_tokenizer)
    write(vocab_lib.path_of(config), out, max_length=config.data.inputs_length)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Hugging Face <-> pretrax checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("from_hf", help="HF directory -> params-only pretrax checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("out")
    exp = sub.add_parser("to_hf", help="pretrax run directory -> HF directory")
    exp.add_argument("run_dir")
    exp.add_argument("out")
    exp.add_argument("--step", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks.")
    args = parser.parse_args(argv)
    try:
        if args.command == "from_hf":
            print(from_hf(args.hf_dir, args.out))
        else:
            to_hf(args.run_dir, args.out, args.step)
            print(args.out)
    except (OSError, ValueError, KeyError) as error:  # a bad path, directory or checkpoint
        if args.verbose:
            raise
        message = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        print(f"ERROR: {message} (--verbose shows the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
