"""T5 v1.1 small on C4, three seeds, each on its own v5e spot slice from the queued-resources API.

    python -m launch.sweep --sweep=configs/sweeps/t5_small_v5e_spot.py --root=sweeps/v5e \
        --backend=tpu_vm [--execute]

writes one script per seed (tests/golden/ holds them): queue for a spot v5litepod-16, wait until
it is ACTIVE, install, mount, train, delete. Spot slices are taken back at any time: the run's
ssh then fails (exit 255, ``status`` says preempted) and ``python -m launch.sweep retry
--root=sweeps/v5e --execute`` queues a new slice and resumes from the last checkpoint in the
bucket. Change the project, zone and bucket to yours (see t5_1_1_base_v4.py for the mount).
"""

from launch import sweep_tpu
from launch.sweep_spec import Sweep, seeds

BUCKET = "my-pretrax-bucket"


def get_sweep() -> Sweep:
    return Sweep(
        name="t5_small_v5e",
        config="configs/t5.py:t5_1_1_small",
        fixed={
            "config.data.source": "seqio",
            "config.data.task": "pretrax_c4_en_span_corruption",
            "config.checkpoint.every": 1000,  # spot: lose at most 1000 steps to a preemption
            "env.TFDS_DATA_DIR": f"gs://{BUCKET}/tensorflow_datasets",
            "tpu.project": "my-project",
            "tpu.zone": "us-west4-a",
            "tpu.accelerator_type": "v5litepod-16",
            "tpu.version": "v2-alpha-tpuv5-lite",
            "tpu.provisioning": "queued_spot",
            "tpu.setup": (sweep_tpu.gcsfuse_setup(BUCKET),),
            "tpu.workdir_root": "/mnt/gcs/sweeps",
        },
        axes=seeds(3),
    )
