"""The train program: the jitted train and eval steps of a config, built without allocating.

:func:`build` turns a config (and a mesh) into a :class:`Program`: the objective, the optimizer,
the abstract train state with its shardings, and the jitted ``train_step`` / ``eval_step`` with
explicit in/out shardings and donation. Nothing is allocated until :meth:`Program.init_state`,
so the same program serves three callers that must agree exactly:

- ``launch/trainer.py`` runs it;
- ``launch/plan.py`` lowers and compiles it ahead of time for a TPU topology
  (``program.lower()`` on abstract inputs);
- ``launch/bench.py`` times it.

Randomness: one root key from ``config.seed`` split once into init / train / eval keys; step
``s`` uses ``fold_in(train_key, s)`` (and microbatch ``i`` a further ``fold_in(., i)``), so the
step neither takes nor returns a key and a resumed run draws exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from launch import mesh as mesh_lib
from launch import optim
from objectives import registry

NAN_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything the train loop runs, before any array exists."""

    objective: registry.Objective
    mesh: Mesh
    rules: mesh_lib.Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_key: jax.Array
    train_key: jax.Array
    eval_key: jax.Array
    # {"step", "params", "opt_state"} as ShapeDtypeStructs carrying their shardings.
    abstract_state: Any
    state_shardings: Any
    batch_sharding: NamedSharding
    train_step: Callable[[Any, dict], tuple[Any, dict]]  # jitted, donates the state
    eval_step: Callable[[Any, dict, jax.Array], dict]  # jitted
    # jitted objective.predict_fn (fine-tuning objectives), replicated outputs; else None
    predict_step: Callable[[Any, dict], jax.Array] | None
    _init_fn: Callable[[], Any]
    _boxed_shardings: Any

    def init_state(self) -> Any:
        """The freshly initialised train state, every shard created on the device holding it."""
        with mesh_lib.use_mesh(self.mesh, self.rules):
            state = jax.jit(self._init_fn, out_shardings=self._boxed_shardings)()
        return meta.unbox(state)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch as ShapeDtypeStructs laid out by the batch sharding."""
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
                for k, (shape, dtype) in self.objective.batch_spec.items()}

    def lower(self) -> jax.stages.Lowered:
        """The train step lowered on abstract inputs (``.compile()`` it for memory and cost)."""
        with mesh_lib.use_mesh(self.mesh, self.rules):
            return self.train_step.lower(self.abstract_state, self.abstract_batch())


def build(config: Any, mesh: Mesh | None = None,
          objective: registry.Objective | None = None) -> Program:
    """The program of ``config`` on ``mesh`` (default: ``config.mesh`` over all devices).

    Start-up errors (an unknown rule preset or NaN policy, a mesh that does not divide the batch
    or a weight) are raised here, before anything is allocated.
    """
    if config.train.nan_policy not in NAN_POLICIES:
        raise ValueError(f"config.train.nan_policy={config.train.nan_policy!r}; expected one of "
                         f"{NAN_POLICIES}")
    for key in ("metrics_lag", "stop_check_every"):
        value = config.train[key]
        if value < (0 if key == "metrics_lag" else 1):
            raise ValueError(f"config.train.{key}={value}; expected an integer >= "
                             f"{0 if key == 'metrics_lag' else 1}")
    if config.sharding not in mesh_lib.RULES:
        raise ValueError(f"config.sharding={config.sharding!r}; expected one of "
                         f"{sorted(mesh_lib.RULES)}")
    if mesh is None:
        mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
    rules = mesh_lib.RULES[config.sharding]
    objective = objective or registry.build(config)
    microbatches = config.train.microbatches

    init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    # Shapes and logical axes only: a bad rule is reported by validate() below, with numbers.
    abstract_params = jax.eval_shape(objective.init_fn, init_key)["params"]
    mesh_lib.validate(mesh, rules, abstract_params=abstract_params,
                      global_batch_size=config.data.batch_size, num_microbatches=microbatches)
    depths = (objective.param_depths(meta.unbox(abstract_params))
              if objective.param_depths is not None else None)
    if config.optimizer.layerwise_lr_decay != 1.0 and depths is None:
        raise ValueError(f"config.optimizer.layerwise_lr_decay="
                         f"{config.optimizer.layerwise_lr_decay} needs a fine-tuning objective "
                         f"that knows layer depths; {objective.name!r} does not (set it to 1.0)")
    tx = optim.make_optimizer(config.optimizer,
                              param_axes=mesh_lib.logical_specs(abstract_params),
                              param_depths=depths, num_layers=objective.num_layers)
    schedule = optim.make_schedule(config.optimizer)

    def init_fn():
        params = objective.init_fn(init_key)["params"]
        # Boxed params give boxed moments, so the optimizer state is born sharded too.
        return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}

    with mesh_lib.use_mesh(mesh, rules):
        abstract_boxed = jax.eval_shape(init_fn)
        state_shardings = mesh_lib.params_shardings(abstract_boxed, mesh, rules)
    boxed_shardings = jax.tree.map(
        lambda x, s: x.replace_boxed(s) if isinstance(x, meta.AxisMetadata) else s,
        abstract_boxed, state_shardings, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        meta.unbox(abstract_boxed), state_shardings)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    skip_nonfinite = config.train.nan_policy == "skip"

    inject_at, inject_into = config.debug.inject_nan_at_step, config.debug.inject_into
    if config.debug.inject_value not in ("nan", "inf") or inject_into not in ("loss",
                                                                              "gradients"):
        raise ValueError(f"config.debug.inject_value={config.debug.inject_value!r} / "
                         f"inject_into={inject_into!r}; expected 'nan' or 'inf' / 'loss' or "
                         "'gradients'")
    inject_value = float(config.debug.inject_value)

    def train_step(state, batch):
        step_key = jax.random.fold_in(train_key, state["step"])
        # config.debug: a deliberate non-finite value at one step (1.0 everywhere else).
        poison = (jnp.where(state["step"] + 1 == inject_at, inject_value, 1.0)
                  if inject_at is not None else None)

        def loss_fn(params, micro, key):
            loss, metrics = objective.loss_fn(params, micro, key, False)
            if poison is not None and inject_into == "loss":
                loss = loss * poison
            return loss, metrics

        (loss, metrics), grads = optim.accumulate_gradients(
            loss_fn, state["params"], batch, microbatches, has_aux=True,
            reduction=objective.reduction, rng_key=step_key)
        if poison is not None and inject_into == "gradients":
            grads = jax.tree.map(lambda g: g * poison.astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads)
        if objective.reduction == "sum":
            # The loss (and its gradient) is a sum over microbatches; per-token rates average.
            metrics = jax.tree.map(lambda m: m / microbatches, metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1,
                     "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        if skip_nonfinite:
            # Keep the old params/moments when the loss or a gradient is not finite; the step
            # still counts.
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                {k: new_state[k] for k in ("params", "opt_state")},
                                {k: state[k] for k in ("params", "opt_state")})
            new_state = {"step": new_state["step"], **kept}
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
                   "learning_rate": schedule(state["step"])}
        return new_state, metrics

    def eval_step(params, batch, key):
        loss, metrics = objective.loss_fn(params, batch, key, True)
        return {**metrics, "loss": loss}

    # One sharding for every batch array (a pytree prefix): rows over data x fsdp.
    jitted_train = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                           out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    jitted_eval = jax.jit(eval_step, in_shardings=(state_shardings["params"], batch_sharding,
                                                   None), out_shardings=replicated)
    jitted_predict = None
    if objective.predict_fn is not None:
        jitted_predict = jax.jit(objective.predict_fn,
                                 in_shardings=(state_shardings["params"], batch_sharding),
                                 out_shardings=replicated)
    return Program(objective=objective, mesh=mesh, rules=rules, tx=tx, schedule=schedule,
                   init_key=init_key, train_key=train_key, eval_key=eval_key,
                   abstract_state=abstract_state, state_shardings=state_shardings,
                   batch_sharding=batch_sharding, train_step=jitted_train,
                   eval_step=jitted_eval, predict_step=jitted_predict, _init_fn=init_fn,
                   _boxed_shardings=boxed_shardings)
