"""Peak resident memory of this process and of this process with its children (Linux /proc).

`resource.getrusage(...).ru_maxrss` is no use for a process started by another: Linux carries the
parent's peak across fork and exec, so a small child of a large parent reports the parent's
peak. VmHWM in /proc/self/status is this process's own; children are sampled.
"""

from __future__ import annotations

import glob
import os
import threading


def _status_kib(pid, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def own_peak_bytes() -> int:
    """This process's peak resident memory since it started (VmHWM)."""
    return _status_kib("self", "VmHWM") * 1024


class TreePeak:
    """Samples, every `interval` s, the resident memory of this process plus its children; `peak`
    is the largest sum seen (bytes). Use as a context manager."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        children = set()
        for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
            with open(path) as f:
                children.update(f.read().split())
        return (_status_kib("self", "VmRSS") + sum(_status_kib(pid, "VmRSS") for pid in children)) * 1024

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, own_peak_bytes())
