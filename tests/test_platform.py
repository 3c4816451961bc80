"""launch.platform's host allocator setting: when it applies, that the re-exec carries it, and
that under it glibc reuses large buffers freed by another thread instead of refaulting them."""

import subprocess
import sys

import pytest

from launch import platform
from tests.helpers import REPO, cli_env

TUNED = ":".join(platform.HOST_ALLOCATOR_TUNABLES)


def test_host_allocator_env_only_where_it_changes_something(monkeypatch):
    monkeypatch.setattr(platform.std_platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert platform.host_allocator_env({"PATH": "/bin"}) == {"PATH": "/bin",
                                                              "GLIBC_TUNABLES": TUNED}
    # Other tunables are kept; the user's own malloc choices and the opt-out are respected.
    kept = platform.host_allocator_env({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    assert kept["GLIBC_TUNABLES"] == "glibc.rtld.nns=2:" + TUNED
    assert platform.host_allocator_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None
    assert platform.host_allocator_env({"PRETRAX_HOST_ALLOCATOR": "default"}) is None
    monkeypatch.setattr(platform.std_platform, "libc_ver", lambda: ("", ""))
    assert platform.host_allocator_env({}) is None  # musl and others: glibc's tunables mean nothing


def test_reexec_keeps_the_process_and_its_arguments():
    code = ("import os, sys; from launch import platform; platform.reexec_with_host_allocator(); "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), sys.argv[1:])")
    env = cli_env(1)
    env.pop("GLIBC_TUNABLES", None)
    child = subprocess.Popen([sys.executable, "-c", code, "a b", "--x=1"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    pid, tunables, args = out.split(" ", 2)
    assert int(pid) == child.pid  # the same process: schedulers and signals see no change
    assert args.strip() == "['a b', '--x=1']"
    assert tunables == (TUNED if platform.host_allocator_env(env) is not None else "-")


_FAULTS = """
import resource, threading, numpy as np
faults = []
def work():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = np.ones(64 << 20, np.float32)  # 256 MiB, like a step's attention arrays
        del buffer
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start(); thread.join()
print(sum(faults[1:]))
"""


def test_large_buffers_are_reused_without_page_faults():
    """Real glibc, no mock: a worker thread allocates, fills and frees 256 MiB four times. With
    glibc's defaults every round maps fresh memory and faults it in again; with the tuned
    allocator only the first round does."""
    env = cli_env(1)
    env.pop("GLIBC_TUNABLES", None)
    tuned = platform.host_allocator_env(env)
    if tuned is None:
        pytest.skip("glibc's tunables only exist under glibc")

    def faults(environ):
        done = subprocess.run([sys.executable, "-c", _FAULTS], env=environ, capture_output=True,
                              text=True, timeout=120, check=True)
        return int(done.stdout)

    assert faults({**env, "PRETRAX_HOST_ALLOCATOR": "default"}) >= 3 * 100  # >= 100 per round
    assert faults(tuned) < 100
