"""Two local processes x 4 CPU devices assemble the same global batches as 1 process x 8.

The workers run ``jax.distributed.initialize`` on loopback with gloo CPU collectives; every
wait is bounded (initialization/shutdown timeouts and a subprocess timeout), so a broken
coordinator fails the test instead of hanging it.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from data import bundled, pipeline
from launch import mesh as mesh_lib
from tests.helpers import REPO, free_port

TIMEOUT = 150
BATCH, LENGTH, SEED, STEPS = 16, 32, 7, 2

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_threefry_partitionable", True)
    address, pid, cache_dir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=pid,
                               initialization_timeout=60, shutdown_timeout_seconds=30)
    import numpy as np
    from jax.experimental import multihost_utils
    from data import bundled, pipeline
    from launch import mesh as mesh_lib

    assert jax.process_count() == 2 and jax.local_device_count() == 4
    sharding = mesh_lib.batch_sharding(mesh_lib.make_mesh(data=2, fsdp=4, model=1))

    def source():
        return pipeline.t5_examples(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                    inputs_length={length}, seed={seed}, cache_dir=cache_dir)

    def gather(batch):
        return {{k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
                for k, v in batch.items()}}

    examples = source()
    p = pipeline.InputPipeline(examples, {batch}, sharding=sharding, prefetch=2)
    arrays = {{}}
    for step in range({steps}):
        for k, v in gather(next(p)).items():
            arrays[f"{{step}}/{{k}}"] = v
    state = pipeline.global_state(p)
    p.close()
    resumed = pipeline.InputPipeline(source(), {batch}, sharding=sharding, state=state,
                                     prefetch=0)
    for k, v in gather(next(resumed)).items():
        arrays[f"{steps}/{{k}}"] = v
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as f:
        json.dump({{"streams": sorted(int(k) for k in p.state()["streams"]),
                   "calls": examples.calls, "state": state}}, f)
    jax.distributed.shutdown()
""").format(length=LENGTH, seed=SEED, batch=BATCH, steps=STEPS)


def _run_workers(script, address, arg, outs, env):
    """Runs ``script ADDRESS PID ARG OUT`` as processes 0 and 1 of a job; both must exit 0
    (every wait bounded; a worker left running is killed)."""
    procs = [subprocess.Popen([sys.executable, str(script), address, str(i), arg, outs[i]],
                              env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]


def test_two_processes_build_the_same_global_batches(tmp_path):
    cache_dir = str(tmp_path / "tokens")
    # Build the token cache once up front, so the workers only load it.
    single = pipeline.t5_examples(bundled.VALIDATION_FILES, bundled.VOCAB_PATH,
                                  inputs_length=LENGTH, seed=SEED, cache_dir=cache_dir)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    address = f"127.0.0.1:{free_port()}"
    outs = [str(tmp_path / f"out{i}") for i in range(2)]
    _run_workers(script, address, cache_dir, outs, env)

    # The single-process reference: 8 devices in this process, same mesh shape and sharding.
    sharding = mesh_lib.batch_sharding(mesh_lib.make_mesh(data=2, fsdp=4, model=1))
    ref = pipeline.InputPipeline(single, BATCH, sharding=sharding, prefetch=0)
    expected = [{k: np.asarray(v) for k, v in next(ref).items()} for _ in range(STEPS)]
    ref_state = ref.state()
    expected.append({k: np.asarray(v) for k, v in next(ref).items()})
    for out in outs:
        got = np.load(out + ".npz")
        for step, batch in enumerate(expected):
            for key, value in batch.items():
                np.testing.assert_array_equal(got[f"{step}/{key}"], value, err_msg=f"{step} {key}")
    info = [json.load(open(out + ".json")) for out in outs]
    # Each process built only its own half of the streams, one per row (and so read only its
    # share).
    half = BATCH // 2
    assert info[0]["streams"] == list(range(half))
    assert info[1]["streams"] == list(range(half, BATCH))
    assert info[0]["calls"] == info[1]["calls"] == single.calls // 2
    # global_state() gathers every stream's position: identical everywhere, equal to 1 x 8.
    assert info[0]["state"] == info[1]["state"] == ref_state
    assert sorted(map(int, info[0]["state"]["streams"])) == list(range(BATCH))


ITERATOR_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address, pid, directory, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=pid,
                               initialization_timeout=60, shutdown_timeout_seconds=30)
    import tensorflow as tf
    from launch import checkpoint as ckpt_lib

    def iterator():  # this process's shard, shuffled, batched and prefetched
        dataset = tf.data.Dataset.range(1000).shard(2, pid).shuffle(50, seed=3).batch(4)
        return iter(dataset.prefetch(2))

    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec())
    state = {"step": jax.make_array_from_callback((), replicated, lambda i: np.int32(5))}
    it = iterator()
    for _ in range(5):
        next(it)
    saver = ckpt_lib.Checkpointer(directory, every=1, keep=2, log=lambda m: None)
    saver.save(5, state, {"batches": 5}, it)  # async: the arrays are written after it returns
    expected = [next(it).numpy().tolist() for _ in range(3)]  # ... the iterator before
    saver.close()

    loader = ckpt_lib.Checkpointer(directory, every=1, keep=2, log=lambda m: None)
    step, _, data_state = loader.restore(ckpt_lib.abstract_like(state, {"step": replicated}))
    fresh = iterator()
    why = loader.restore_iterator(step, fresh)
    got = [next(fresh).numpy().tolist() for _ in range(3)]
    # Process 1's iterator unreadable: both processes give up on theirs, so both re-read.
    if pid == 1:
        with open(f"{directory}/5/iterator/process_1-of-2.data-00000-of-00001", "r+b") as f:
            f.truncate(10)
    why_broken = loader.restore_iterator(step, iterator())
    loader.close()
    with open(out, "w") as f:
        json.dump({"step": step, "why": why, "expected": expected, "got": got,
                   "why_broken": why_broken}, f)
    jax.distributed.shutdown()
""")


def test_two_processes_each_restore_their_own_data_iterator(tmp_path):
    """Each process of a 2-process job saves its tf.data iterator into the same orbax step and
    restores its own: the next batches are the ones it would have read."""
    script = tmp_path / "worker.py"
    script.write_text(ITERATOR_WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    address = f"127.0.0.1:{free_port()}"
    directory = str(tmp_path / "checkpoints")
    outs = [str(tmp_path / f"out{i}.json") for i in range(2)]
    _run_workers(script, address, directory, outs, env)
    saved = os.listdir(os.path.join(directory, "5", "iterator"))
    assert sorted(f for f in saved if f.startswith("process_")) == [
        f"process_{i}-of-2.{ext}" for i in range(2) for ext in ("data-00000-of-00001", "index")]
    results = [json.load(open(out)) for out in outs]
    for pid, result in enumerate(results):
        assert result["step"] == 5 and result["why"] is None
        assert result["got"] == result["expected"]
        assert all(x % 2 == pid for batch in result["got"] for x in batch)  # its own shard
    assert "process(es) [1] could not restore theirs" in results[0]["why_broken"]
    assert results[1]["why_broken"] and "could not restore" not in results[1]["why_broken"]
