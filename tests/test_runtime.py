"""segclip.runtime: glibc keeps freed memory in the command line's process (no page faults for every large
activation), and a user's own allocator settings win."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segclip import cli, runtime

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                           reason="glibc's malloc only")

FAULTS = r"""
import resource, sys, torch
from segclip.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def work():  # three live 64 MB blocks per round, freed at its end, like a forward pass's activations
    a = torch.ones(16 << 20); b = a * 2; c = b + a; return float(c[0])
for _ in range(6):
    work()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    work()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
APPLIED = "from segclip.runtime import keep_freed_memory; print(keep_freed_memory(), 0)"


def faults(mode: str, code: str = FAULTS, **env: str) -> tuple[bool, int]:
    """(applied, page faults of five rounds) in a fresh process, "keep" or "default", without the caller's
    malloc settings."""
    clean = {k: v for k, v in os.environ.items() if k not in runtime.USER_SETTINGS and k != "SEGCLIP_ALLOCATOR"}
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                          env={**clean, "OMP_NUM_THREADS": "1", **env})
    applied, count = done.stdout.split()
    return applied == "True", int(count)


@glibc
def test_freed_memory_is_reused_without_page_faults():
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied
    assert default > 5 * 3 * 8192  # glibc unmaps every 64 MB block: each round faults its pages in again
    assert kept < default / 4


@glibc
@pytest.mark.parametrize("env", [{"SEGCLIP_ALLOCATOR": "default"}, {"MALLOC_MMAP_MAX_": "65536"},
                                 {"LD_PRELOAD": ""}])
def test_the_users_settings_win(env):
    assert faults("keep", APPLIED) == (True, 0)
    assert faults("keep", APPLIED, **env) == (False, 0)


def test_the_command_line_applies_it(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(True))  # imported when a command runs
    with pytest.raises(SystemExit):  # --help exits before any command runs: nothing to tune
        cli.main(["decompose", "--help"])
    assert not calls
    assert cli.main(["decompose"]) == 0
    assert calls == [True]
