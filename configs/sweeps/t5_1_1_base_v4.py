"""T5 v1.1 base on C4 on one v4-32 slice: two base learning rates, one after the other.

    python -m launch.sweep --sweep=configs/sweeps/t5_1_1_base_v4.py --root=sweeps/t5_base \
        --backend=tpu_vm [--execute]

writes ``sweeps/t5_base/tpu/t5-base-v4-32.sh`` (tests/golden/ holds what it writes): create the
slice, install pretrax at this checkout's commit on its 4 workers, mount the bucket, train the
two runs one after another, delete the slice. Change the project, zone and bucket to yours. The
workers mount gs://BUCKET at /mnt/gcs with gcsfuse (install it on the image, or swap the setup
line for a Filestore mount); checkpoints and metrics go there, so a rerun resumes, and
``status`` reads them when this machine mounts the bucket at the same path.
"""

from launch import sweep_tpu
from launch.sweep_spec import Sweep, values

BUCKET = "my-pretrax-bucket"


def get_sweep() -> Sweep:
    return Sweep(
        name="t5_base",
        config="configs/t5.py:t5_1_1_base",
        fixed={
            # The README's C4 task: TFDS c4/en:3.0.1, prepared under the bucket.
            "config.data.source": "seqio",
            "config.data.task": "pretrax_c4_en_span_corruption",
            "env.TFDS_DATA_DIR": f"gs://{BUCKET}/tensorflow_datasets",
            "tpu.project": "my-project",
            "tpu.zone": "us-central2-b",
            "tpu.accelerator_type": "v4-32",
            "tpu.version": "tpu-ubuntu2204-base",
            "tpu.slice": "t5-base-v4-32",  # both runs on this one slice, one after the other
            "tpu.setup": (sweep_tpu.gcsfuse_setup(BUCKET),),
            "tpu.workdir_root": "/mnt/gcs/sweeps",
        },
        # T5X's rsqrt schedule: lr = base / sqrt(max(step, 10k)); 1.0 is the paper's base.
        axes=values("config.optimizer.learning_rate", [1.0, 0.5], label="lr"),
    )
