"""kboost.memory: freed tensor memory stays in the process (no page faults on the next step)."""
import subprocess
import sys

import pytest

# RSS (pages) before an allocation of 256 MB, with it, and after freeing it
PROBE = """
import sys
import torch
from kboost.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # applies, and again is fine
def rss():
    return int(open("/proc/self/statm").read().split()[1])
before = rss()
x = torch.ones(64 * 2**20)
held = rss()
del x
print(before, held, rss())
"""


def _probe(mode: str) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return tuple(int(v) for v in out.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_stays_with_the_process_only_when_asked():
    before, held, after = _probe("default")
    pages = (held - before)
    assert pages > 50_000  # 256 MB of 4 KiB pages touched
    assert after - before < pages / 4  # glibc's default: the block went back to the system
    before, held, after = _probe("retain")
    assert held - before > 50_000
    assert after - before > 0.9 * (held - before)  # kept for the next allocation
