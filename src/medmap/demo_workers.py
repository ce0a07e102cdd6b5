"""The demo's processes: a stage clock that counts the CPU of this process and its workers, and
the pool of worker processes (one per share of the cores, pinned to it, with as many torch
threads as it has cores) that preprocesses, extracts radiomics and, with two or more organs,
trains the organs side by side.

Example:
    >>> clock = StageClock()
    >>> with clock("sleep"):
    ...     pass
    >>> sorted(clock.table["sleep"])
    ['cpu_s', 'wall_s']
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class StageClock:
    """Wall and CPU seconds (user + sys, this process and its children: finished ones, and on
    Linux the running ones, such as a worker pool kept across stages) per named stage:
    ``with clock("liver: fine-tuning"): ...``; ``table`` maps each name to both."""

    def __init__(self):
        self.table: dict[str, dict[str, float]] = {}

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
                + _running_children_cpu())

    @contextlib.contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.table[name] = {"wall_s": round(time.perf_counter() - t, 1),
                                "cpu_s": round(self._cpu() - c, 1)}


def _running_children_cpu() -> float:
    """User + sys seconds of this process's running children (``/proc``; 0 elsewhere)."""
    import multiprocessing

    tick, total = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, 0.0
    for child in multiprocessing.active_children():
        try:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()       # after "pid (comm)": state is field 0
        total += (int(fields[11]) + int(fields[12])) / tick   # utime, stime
    return total


def own_peak_rss_gb() -> float:
    """Peak resident memory of this process alone, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children (the largest one), GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024 ** 2


def _cores() -> list[int]:
    """The cores this process may run on (its affinity; ``range(os.cpu_count())`` elsewhere)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _pin_worker(counter, n_workers: int) -> None:
    """Initialiser of the demo's workers: the i-th worker started keeps every ``n_workers``-th
    core from the i-th on (its share; on Linux, by affinity, so that whatever it runs sizes its
    own worker counts by that share) and takes as many torch threads."""
    import torch

    with counter.get_lock():
        i = counter.value
        counter.value += 1
    share = _cores()[i % n_workers::n_workers]
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, share)
    torch.set_num_threads(max(1, len(share)))


def _worker_context(threads: int):
    """``fork`` on Linux when each worker runs one torch thread (the workers inherit this
    process's imports instead of paying ~5 s each to import torch and MONAI again; the demo
    starts them before it trains anything; one thread never enters an OpenMP region the
    parent may have started), ``spawn`` otherwise."""
    from multiprocessing import get_all_start_methods, get_context

    if threads == 1 and sys.platform.startswith("linux") and "fork" in get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")


@contextlib.contextmanager
def shared_workers(n_workers: int | None = None, preload: Sequence[str] = ()):
    """A process pool of ``n_workers`` workers (None: one per core), each pinned to its share
    of the cores with as many torch threads (None when there is only one core); its workers
    start when the block begins and stop when it ends (killed if the block raises, so a
    failed organ does not leave the other one training). ``preload``: modules this process
    imports before forking them, so that each worker inherits them instead of importing them
    itself (~7 s of CPU each for MONAI, Lightning, transformers and MIRP)."""
    import importlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores = len(_cores())
    if cores < 2:
        yield None
        return
    n = min(cores, n_workers or cores)
    ctx = _worker_context(cores // n)
    if ctx.get_start_method() == "fork":
        for name in preload:
            importlib.import_module(name)
    before = {c.pid for c in multiprocessing.active_children()}
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_pin_worker,
                               initargs=(ctx.Value("i", 0), n))
    for f in [pool.submit(int) for _ in range(n)]:   # start every worker now, before training
        f.result()
    workers = [c for c in multiprocessing.active_children() if c.pid not in before]
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if not ok:
            for child in workers:
                child.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
