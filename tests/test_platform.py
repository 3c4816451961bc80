"""launch.platform's huge-page setting: when it applies, and that the re-exec carries it."""

import subprocess
import sys

import pytest

from launch import platform
from tests.helpers import REPO, cli_env


@pytest.mark.parametrize("mode, expected", [("madvise", True), ("always", False),
                                            ("never", False), ("", False)])
def test_huge_pages_env_only_where_it_changes_something(monkeypatch, mode, expected):
    monkeypatch.setattr(platform, "_transparent_huge_pages_mode", lambda: mode)
    monkeypatch.setattr(platform.std_platform, "libc_ver", lambda: ("glibc", "2.36"))
    env = platform.huge_pages_env({"PATH": "/bin"})
    assert (env is not None) == expected
    if expected:
        assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
        # Other tunables are kept; the user's own choice and the opt-out are respected.
        kept = platform.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
        assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
        assert platform.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
        assert platform.huge_pages_env({"PRETRAX_HUGE_PAGES": "0"}) is None
    monkeypatch.setattr(platform.std_platform, "libc_ver", lambda: ("", ""))
    assert platform.huge_pages_env({}) is None  # musl and others: glibc's tunable means nothing


def test_reexec_keeps_the_command_and_sets_the_tunable_where_it_applies():
    code = ("import os, sys; from launch import platform; platform.reexec_with_huge_pages(); "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), sys.argv[1:])")
    env = cli_env(1)
    env.pop("GLIBC_TUNABLES", None)
    before = subprocess.Popen([sys.executable, "-c", code, "a b", "--x=1"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    out, _ = before.communicate(timeout=60)
    pid, tunables, args = out.split(" ", 2)
    assert int(pid) == before.pid  # the same process: schedulers and signals see no change
    assert args.strip() == "['a b', '--x=1']"
    applies = platform.huge_pages_env(env) is not None
    assert tunables == ("glibc.malloc.hugetlb=1" if applies else "-")
