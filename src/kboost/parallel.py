"""Ordered parallel map over worker processes with a progress bar.

Results come back in input order and every item is processed by a pure function of the item,
so outputs never depend on the number of workers.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_ordered(
    function: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    desc: str = "",
    unit: str = "item",
    chunksize: int | None = None,
    threads: bool = False,
    progress: bool = True,
) -> list[R]:
    """Apply ``function`` to ``items`` in ``workers`` processes (1 = in this process).

    Worker processes are spawned, not forked, so libraries with process-global state
    (torch thread pools, espeak-ng) start clean in each worker. ``threads`` uses a thread pool
    instead, for I/O-bound work (file copies, audio codecs release the GIL).
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
               disable=not progress)
    try:
        if threads and workers > 1 and len(items) > 1:
            results = []
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(function, items):
                    results.append(result)
                    bar.update()
            return results
        if workers <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(function(item))
                bar.update()
            return results
        if chunksize is None:
            chunksize = max(1, min(16, len(items) // (workers * 8)))
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            results = []
            for result in pool.imap(function, items, chunksize=chunksize):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


# Read by BLAS / OpenMP / numba when they are first loaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMBA_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Hold this process to ``threads`` threads in every numeric library: the environment for
    libraries loaded from now on (numba's engine loads SciPy's OpenBLAS only when it compiles),
    threadpoolctl for those already loaded, torch's own pools. Call it before the libraries are
    imported and again after a model is compiled."""
    for variable in THREAD_VARIABLES:
        # numba rereads its variables at every compilation and refuses a changed thread count
        # once its pool exists; once it is loaded, set_num_threads below is the way.
        if not (variable == "NUMBA_NUM_THREADS" and "numba" in sys.modules):
            os.environ[variable] = str(threads)
    if "numpy" in sys.modules or "torch" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set, or parallel work already ran in this process
            pass
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def thread_report() -> str:
    """The threads each loaded numeric library will use, as threadpoolctl sees them, and torch's."""
    from threadpoolctl import threadpool_info

    parts = [f"{lib.get('internal_api', lib.get('user_api'))} {lib['num_threads']}" for lib in threadpool_info()]
    if "torch" in sys.modules:
        import torch

        parts.insert(0, f"torch {torch.get_num_threads()}")
    return ", ".join(parts)
