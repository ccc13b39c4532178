"""The machine the benches run on: how busy it is, and waiting until it is quiet.

The benches share two cores with whatever else runs; each waits for the rest of the
machine to settle before a measured run and reports the whole machine's CPU."""

import os
import time
from pathlib import Path


def machine_busy():
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def settle(limit, threshold=0.25, window=0.5):
    """Wait (up to `limit` s) until the machine uses < `threshold` cores; returns how busy
    it was at the last look (cores)."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy()
        time.sleep(window)
        cores = (machine_busy() - busy) / window
        if cores < threshold or time.monotonic() >= deadline:
            return cores
