"""scratchlm.hostmem: with freed memory retained, a repeated step of large allocations stops faulting pages in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scratchlm import hostmem

pytestmark = pytest.mark.skipif(hostmem._glibc() is None, reason="the policy is glibc's mallopt (Linux)")

# One "training step" of tensors above glibc's mmap threshold (40-60 MB each), allocated, used and freed, as a
# step's gradients and activations are; per step: the minor page faults and the resident size.
STEPS = """
import json, resource, sys
import torch
from scratchlm import hostmem
applied = hostmem.retain_freed_memory() if sys.argv[1] == "on" else False
w = torch.randn(2000, 5000)
rows = []
for _ in range(30):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    g = torch.zeros(2000, 5000); a = torch.randn(1000, 5000); g += a.sum(); b = a * 2
    c = torch.ones(3000, 5000); g2 = g * 3 + w; del a, b, c, g, g2
    rss = int(open("/proc/self/statm").read().split()[1]) * 4096
    rows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, rss))
print(json.dumps({"applied": applied, "again": hostmem.retain_freed_memory() if applied else None, "rows": rows}))
"""


def _run(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, policy], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_ends_the_page_faults_of_a_repeated_step() -> None:
    on, off = _run("on"), _run("off")
    assert on["applied"] is True and on["again"] is True  # applied once, idempotent
    pages = 200e6 / 4096  # what one step touches: about 200 MB of fresh tensors
    # glibc's default: every step maps, faults in and unmaps its large tensors again
    assert all(faults > 0.3 * pages for faults, _ in off["rows"][-10:]), off["rows"]
    # retained: once the heap has grown to hold the step (a few steps: torch's aligned blocks do not always fit
    # the holes the last step left), the steps reuse it
    assert all(faults < 0.01 * pages for faults, _ in on["rows"][-10:]), on["rows"]
    assert len({rss for _, rss in on["rows"][-10:]}) == 1, on["rows"]  # and the process stops growing,
    assert on["rows"][-1][1] < on["rows"][0][1] + 1.5 * 200e6, on["rows"]  # within 1.5 steps of its first size
