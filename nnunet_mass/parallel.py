"""Mapping a function over cases, in-process or in a pool of worker processes."""
import multiprocessing
import os
from contextlib import contextmanager


def _limit_simpleitk_threads(threads: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


@contextmanager
def case_mapper(num_processes: int, num_tasks: int):
    """Yields an unordered map(function, tasks): the builtin map for one process, else a pool.

    The pool uses spawn, not fork: forking a process whose SimpleITK or OpenMP thread pool
    is running can deadlock. Workers share the cores (SimpleITK threads are divided among
    them), and the pool is terminated on errors and Ctrl-C so no worker outlives the run.
    """
    num_processes = max(1, min(int(num_processes), num_tasks))
    if num_processes == 1:
        yield map
        return
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    pool = multiprocessing.get_context("spawn").Pool(
        num_processes, initializer=_limit_simpleitk_threads, initargs=(threads,))
    try:
        yield lambda function, tasks: pool.imap_unordered(function, tasks, chunksize=1)
    finally:
        pool.terminate()
        pool.join()
