r"""The same ELECTRA pretraining run with Hugging Face's PyTorch models: the reference for
pretrax's replaced-token-detection curves.

    python -m launch.electra_reference --config=configs/electra.py:laptop --workdir=runs/hf_laptop
    python -m launch.plot_rtd runs/laptop runs/hf_laptop --out=rtd.png   # curves side by side

It reads the pretrax config (model sizes, batch, length, mask rate, temperature, loss weights,
learning rate, warm-up, steps, evaluation cadence) and the same token stream (pretrax's example
builder: token ids only, in the same order, through one CPU device), and builds everything else
itself, in PyTorch: attention mask (ids != 0), token types (0 through the first [SEP], 1 after),
the masked positions (per row max(1, min(N, round(real * p))) real non-special tokens, 85% of them
[MASK]), generator logits at every position (``ElectraForMaskedLM``), replacements by
``torch.multinomial`` at the temperature, labels (replacement != original),
``ElectraForPreTraining``'s loss over real tokens, MLM + weight x BCE, one AdamW over both
networks (no weight decay on LayerNorm and biases, clipping 1.0, ELECTRA's linear decay times
the warm-up factor) with the word / position / type embeddings and their LayerNorm shared.
Needs ``pip install -e ".[reference]"``. Known difference: PyTorch's AdamW has bias
correction; ELECTRA's (and pretrax's) does not.

Evaluation on the same validation batches every ``config.train.eval_every`` steps writes
``eval/disc_auc``, ``eval/disc_precision``, ``eval/disc_recall``, ``eval/gen_accuracy``,
``eval/mlm_loss``, ``eval/disc_loss`` to WORKDIR/metrics.jsonl, as pretrax does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from launch import metrics as metrics_lib


def token_types(ids: Any, sep_id: int) -> Any:
    """0 up to and including the first [SEP] of each row, 1 after it (padding included)."""
    import torch

    seen = torch.cumsum((ids == sep_id).long(), dim=1)
    first = (ids == sep_id) & (seen == 1)
    return ((seen - first.long()) > 0).long()


def mask_batch(ids: Any, cfg: dict[str, Any], generator: Any) -> tuple[Any, Any]:
    """(chosen [B, L] bool, masked ids): the reference's masking, built in PyTorch."""
    import torch

    special = (ids == 0) | (ids == cfg["cls"]) | (ids == cfg["sep"]) | (ids == cfg["mask"])
    real = (ids != 0).sum(dim=1)
    budget = int((cfg["mask_prob"] + 0.005) * ids.shape[1])
    wanted = torch.clamp(torch.round(real * cfg["mask_prob"]).long(), 1, budget)
    wanted = torch.minimum(wanted, (~special).sum(dim=1))
    noise = torch.rand(ids.shape, generator=generator).masked_fill(special, 2.0)
    rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    chosen = rank < wanted[:, None]
    to_mask = chosen & (torch.rand(ids.shape, generator=generator) < cfg["mask_replace_prob"])
    return chosen, torch.where(to_mask, torch.full_like(ids, cfg["mask"]), ids)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged)."""
    from scipy.stats import rankdata

    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return 0.5
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/electra.py:VARIANT")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=0, help="stop early (0: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all CPUs)")
    args = parser.parse_args(argv)

    import jax
    import torch
    import transformers

    from launch import inputs as inputs_lib
    from launch import sweep_spec
    from modeling import hf_electra
    from objectives import registry

    config = sweep_spec.load_config(args.config)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    objective = registry.build(config)
    ecfg = objective.model.config
    ids_cfg = objective.special_ids
    obj = config.objective
    cfg = {"cls": ids_cfg["cls"], "sep": ids_cfg["sep"], "mask": ids_cfg["mask"],
           "mask_prob": obj.mask_prob, "mask_replace_prob": obj.mask_replace_prob}

    # ===== Models: HF configs from pretrax's sizes, shared embeddings =====
    generator = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        **hf_electra.config_to_hf(ecfg.generator_config(), "ElectraForMaskedLM")))
    discriminator = transformers.ElectraForPreTraining(transformers.ElectraConfig(
        **hf_electra.config_to_hf(ecfg.discriminator, "ElectraForPreTraining")))
    discriminator.electra.embeddings = generator.electra.embeddings
    named = {}
    for model in (generator, discriminator):
        for name, p in model.named_parameters():
            named.setdefault(id(p), (name, p))
    decay = [p for n, p in named.values() if not ("LayerNorm" in n or n.endswith("bias"))]
    no_decay = [p for n, p in named.values() if "LayerNorm" in n or n.endswith("bias")]
    opt_cfg = config.optimizer
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg.learning_rate, betas=(opt_cfg.b1, opt_cfg.b2), eps=opt_cfg.eps)
    total, warmup = opt_cfg.total_steps, max(1, opt_cfg.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: max(0.0, 1.0 - t / total) * min(1.0, t / warmup))
    params = [p for _, p in named.values()]

    # ===== The token stream: pretrax's examples, ids only =====
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    train = inputs_lib.make_inputs(config, objective,
                                   inputs_lib.make_examples(config, objective, "train"), sharding)
    validation_examples = inputs_lib.make_examples(config, objective, "validation")

    def host_ids(batch) -> Any:
        return torch.as_tensor(np.asarray(jax.device_get(batch["encoder_input_tokens"])),
                               dtype=torch.long)

    def step_losses(ids, rng, temperature):
        chosen, masked = mask_batch(ids, cfg, rng)
        attention = (ids != 0).long()
        types = token_types(ids, cfg["sep"])
        logits = generator(input_ids=masked, attention_mask=attention,
                           token_type_ids=types).logits
        mlm = torch.nn.functional.cross_entropy(logits[chosen], ids[chosen])
        with torch.no_grad():
            probs = torch.softmax(logits[chosen].float() / temperature, dim=-1)
            samples = torch.multinomial(probs, 1, generator=rng)[:, 0]
        corrupted = ids.clone()
        corrupted[chosen] = samples
        labels = (corrupted != ids).long()
        out = discriminator(input_ids=corrupted, attention_mask=attention,
                            token_type_ids=types, labels=labels)
        return mlm, out, logits, chosen, labels, attention

    def evaluate(step: int) -> dict[str, float]:
        generator.eval()
        discriminator.eval()
        rng = torch.Generator().manual_seed(config.seed + 1)
        batches = inputs_lib.make_inputs(config, objective, validation_examples, sharding,
                                         prefetch=0, split="validation")
        scores, labels_all, accs, mlms, discs = [], [], [], [], []
        with torch.no_grad():
            for _ in range(config.train.eval_steps):
                ids = host_ids(next(batches))
                mlm, out, logits, chosen, labels, attention = step_losses(ids, rng,
                                                                          obj.temperature)
                real = attention.bool()
                scores.append(out.logits[real].numpy())
                labels_all.append(labels[real].bool().numpy())
                accs.append((logits[chosen].argmax(-1) == ids[chosen]).float().mean().item())
                mlms.append(mlm.item())
                discs.append(out.loss.item())
        batches.close()
        s, y = np.concatenate(scores), np.concatenate(labels_all)
        predicted = s > 0
        generator.train()
        discriminator.train()
        return {"eval/disc_auc": auc(s, y),
                "eval/disc_accuracy": float((predicted == y).mean()),
                "eval/disc_precision": float((predicted & y).sum() / max(1, predicted.sum())),
                "eval/disc_recall": float((predicted & y).sum() / max(1, y.sum())),
                "eval/replaced_fraction": float(y.mean()),
                "eval/gen_accuracy": float(np.mean(accs)), "eval/mlm_loss": float(np.mean(mlms)),
                "eval/disc_loss": float(np.mean(discs))}

    os.makedirs(args.workdir, exist_ok=True)
    out_path = os.path.join(args.workdir, metrics_lib.METRICS_FILE)
    steps = args.steps or config.train.steps
    rng = torch.Generator().manual_seed(config.seed)
    generator.train()
    discriminator.train()
    with open(out_path, "w") as out:
        def write(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        record = {"step": 0, **evaluate(0)}
        write(record)
        print(f"eval @ step 0: {record}", flush=True)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            ids = host_ids(next(train))
            mlm, disc, *_ = step_losses(ids, rng, obj.temperature)
            loss = obj.gen_weight * mlm + obj.disc_weight * disc.loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opt_cfg.clip_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if step % config.train.log_every == 0:
                rate = step / (time.perf_counter() - start)
                write({"step": step, "loss": loss.item(), "mlm_loss": mlm.item(),
                       "disc_loss": disc.loss.item(), "grad_norm": float(grad_norm),
                       "steps_per_sec": rate})
                print(f"step {step}/{steps} | loss {loss.item():.4f} | {rate:.2f} steps/s | "
                      f"ETA {(steps - step) / rate / 60:.1f} min", flush=True)
            if step % config.train.eval_every == 0 or step == steps:
                record = {"step": step, **evaluate(step)}
                write(record)
                print(f"eval @ step {step}: " + ", ".join(
                    f"{k[5:]} {v:.4f}" for k, v in record.items() if k != "step"), flush=True)
    train.close()


if __name__ == "__main__":
    main()
