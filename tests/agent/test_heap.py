"""glibc's heap thresholds fixed for CPU training (agent/environment/heap.py).

Each case runs in a fresh interpreter: the setting is process-wide and once only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)

# Attach an economy Cockpit to a CPU model, then allocate and free 16 MiB per
# "step" in 1 MiB blocks (the first rounds grow the heap and are not counted):
# more free heap top than glibc's adaptive trim threshold (2 × the largest
# mapped block freed so far: 4 MiB after the first 2 MiB block) allows, so
# without fixed thresholds the rounds may return the pages to the system and
# fault them in again, as the CNN's steps did.
_SCRIPT = """
import json, resource, torch
from torch import nn
from glasscockpit.agent import Cockpit
model = nn.Sequential(nn.Linear(4, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
cockpit = Cockpit(model, opt, server=None, instruments="economy")
first = torch.empty(1 << 19).fill_(1.0)  # 2 MiB: sets the adaptive rule
del first
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(1 << 18).fill_(1.0) for _ in range(16)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
cockpit.close()
print(json.dumps({"heap": cockpit.heap, "meta": cockpit.hello.meta["heap"],
                  "faults": faults[4:]}))
"""

#: Pages of one round's 16 MiB (4 KiB pages).
_ROUND_PAGES = 16 * 256


def _run(keep: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLASSCOCKPIT_KEEP_HEAP", None)
    if keep is not None:
        env["GLASSCOCKPIT_KEEP_HEAP"] = keep
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_kept_heap_reuses_freed_pages_instead_of_faulting_them_in_again() -> None:
    kept = _run(None)
    assert str(kept["heap"]).startswith("kept (glibc mmap threshold 32 MiB")
    assert kept["meta"] == kept["heap"]  # announced in the run's metadata
    faults = kept["faults"]
    assert isinstance(faults, list)
    # A handful of pages of Python objects per round, not the 4,096 of 16 MiB.
    assert max(faults) < _ROUND_PAGES // 20, faults


def test_declined_heap_is_left_as_it_is_and_says_so() -> None:
    # Left to glibc's adaptive rule the 16 MiB free top is often, not always,
    # trimmed and faulted in again every round (it depends on where the heap
    # lands in the address space), so no fault count is asserted here; the
    # measured faults per step are in docs/benchmarks-agent.md.
    declined = _run("0")
    assert declined["heap"] == "unchanged (GLASSCOCKPIT_KEEP_HEAP=0)"
    assert declined["meta"] == declined["heap"]
