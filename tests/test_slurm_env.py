"""launch.trainer.slurm_arguments: what jax.distributed gets from SLURM's environment."""

import pytest
from jax._src.clusters import slurm_cluster

from launch import trainer

# What srun sets in each task of `srun --nodes=3 --ntasks-per-node=1` (process 1 of 3).
ONE_PER_HOST = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "3", "SLURM_STEP_NUM_TASKS": "3",
                "SLURM_STEP_NODELIST": "gpu[07-08],login3", "SLURM_STEP_TASKS_PER_NODE": "1(x3)",
                "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def test_one_task_per_host_keeps_every_device(monkeypatch):
    args = trainer.slurm_arguments(ONE_PER_HOST)
    # The same coordinator as jax's own SLURM detection (every process must agree on it) ...
    for key, value in ONE_PER_HOST.items():
        monkeypatch.setenv(key, value)
    assert args["coordinator_address"] == slurm_cluster.SlurmCluster.get_coordinator_address(
        None, None) == "gpu07:61586"  # 4242 % 4096 + 61440
    # ... but no detection, which would restrict the process to device [SLURM_LOCALID].
    assert args["cluster_detection_method"] == "deactivate"
    assert (args["num_processes"], args["process_id"]) == (3, 1)


def test_several_tasks_per_host_use_jax_detection():
    env = dict(ONE_PER_HOST, SLURM_STEP_TASKS_PER_NODE="2(x2),1", SLURM_STEP_NUM_TASKS="5",
               SLURM_NTASKS="5", SLURM_NODEID="0")
    assert trainer.slurm_arguments(env) == {}


def test_single_task_and_no_slurm_are_single_process():
    assert trainer.slurm_arguments({}) is None
    assert trainer.slurm_arguments(dict(ONE_PER_HOST, SLURM_STEP_NUM_TASKS="1")) is None
    # sbatch -n 1 runs the script itself as the job's one task, outside any step.
    assert trainer.slurm_arguments({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None


def test_batch_script_of_several_tasks_says_use_srun():
    # What `sbatch -n 2` sets for the script itself (seen on tests/slurm/up.sh's cluster): no
    # SLURM_STEP_* variables.
    with pytest.raises(trainer.StartupError,
                       match=r"SLURM job 7 of 2 tasks.*srun python -m launch"):
        trainer.slurm_arguments({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"})


def test_host_list_expansion():
    assert trainer._slurm_hosts("node[01-03,07],gpu5,a[9-10]") == [
        "node01", "node02", "node03", "node07", "gpu5", "a9", "a10"]
    assert trainer._tasks_on_node("2(x3),1", 3) == 1
    assert trainer._tasks_on_node("2(x3),1", 2) == 2
