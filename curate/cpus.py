"""The CPUs this process may run on: what the verify pool's workers and the local engine's
threads are counted from (stdlib only, so a worker pool's zygote imports nothing heavy)."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs in this process's affinity mask (a container's or ``taskset``'s limit), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
