"""The T5 objective comparison at laptop size: three objectives x 2 seeds on tiny T5.

``python -m launch.sweep --sweep=configs/sweeps/t5_objectives_tiny.py --root=runs/objectives``,
then ``status`` and ``collect`` with the same ``--root`` (README, Sweeps). The bundled corpus,
60 steps per run, well under a minute per run on a 2-core CPU.
"""

from launch.sweep_spec import Sweep, named, product, seeds

# Objective -> its decoder length for 64 input tokens (the trainer names it when it is wrong).
OBJECTIVES = {"span_corruption": 14, "iid_replace_spans": 34, "prefix_lm": 63}


def get_sweep() -> Sweep:
    return Sweep(
        name="t5_objectives_tiny",
        config="configs/t5.py:tiny",
        fixed={"config.train.steps": 60, "config.train.eval_every": 20,
               "config.checkpoint.every": 20, "config.optimizer.total_steps": 60},
        axes=product(
            named({name: {"config.objective.name": name, "config.data.targets_length": length}
                   for name, length in OBJECTIVES.items()}),
            seeds(2)),
    )
