"""Where a search's units of work run: this process, local worker processes, or Ray.

A unit of work is one cell, or with ``batched`` every seed of a batchable cell
(:func:`roadinterp.search.group_cells`); ``work(config_json, cells, spec, save_dir, batched, task_obj, device,
dtype)`` (:func:`roadinterp.search.run_cells`) trains it in whatever process runs it and
returns one row per cell, which ``on_row`` receives in the search's process. Workers are
spawned clean, die with their parent, and leave Ctrl-C to it; :func:`shippable_task` decides
whether a task must travel to them as an object.
"""

from __future__ import annotations

import contextlib
import os

from roadinterp.errors import ConfigError, DependencyError

EXECUTORS = ("local", "ray")


# -------------------------------------------------------------- executors
def _die_with_parent(parent: int) -> None:
    """Pool initializer: on Linux, a worker gets SIGKILL when the search process dies, so a
    killed run leaves no orphaned trainers behind (finished cells are already stored).

    A spawned worker imports roadinterp before this runs; if the parent died meanwhile
    the signal would never come, so check the parent is still ours after arming it.
    """
    import os

    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    # Ctrl-C is the parent's to handle (it stops the workers); a worker never prints a traceback for it.
    # Workers start with SIGINT/SIGTERM blocked (see run_local), so one sent during start-up is dropped here.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def shippable_task(name: str):
    """None when a fresh worker process finds task ``name`` by itself (built in, or a
    ``file.py:NAME`` / ``module:NAME`` reference it re-imports); else the Task object to send
    it (a task registered by the caller's code), checked to pickle."""
    import pickle

    from roadinterp.tasks import get_task

    task = get_task(name)
    if ":" in name or type(task).__module__.startswith("roadinterp."):
        return None
    try:
        pickle.dumps(task)
    except Exception as err:
        raise ConfigError(f"task {name!r} was registered in this process and cannot be sent to worker processes "
                          f"({type(err).__name__}: {err}); define it at module level in a file and pass "
                          "'path/to/file.py:NAME' as the task, or use workers=1") from None
    return task


def run_local(work, config_json, groups, spec, on_row, workers: int = 1, save_dir=None, batched=False,
              task_obj=None, placement=("cpu", "float32")):
    """Run ``groups`` here (``workers`` <= 1) or in ``workers`` spawned processes; rows to ``on_row``."""
    if workers <= 1 or len(groups) <= 1:
        for group in groups:
            for cell, row in zip(group, work(config_json, group, spec, save_dir, batched, None, *placement)):
                on_row(cell, row)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn: workers start clean (no forked torch threads); each loads the cached model once.
    # They are started with SIGINT/SIGTERM blocked (inherited), so a Ctrl-C during their start-up reaches
    # only this process, which stops them; the parent gets it as soon as the block ends.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        with interrupts_deferred():
            futures = {pool.submit(work, config_json, g, spec, save_dir, batched, task_obj,
                                    *placement): g
                       for g in groups}
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in done:
                for cell, row in zip(futures.pop(fut), fut.result()):
                    on_row(cell, row)
    except BaseException:
        # interrupted or failed: stop the running cells now instead of waiting for them to finish. SIGKILL,
        # not SIGTERM: a worker still starting up has SIGTERM blocked, and workers hold nothing to save
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_ray(work, config_json, groups, spec, on_row, address=None, save_dir=None, batched=False,
            task_obj=None, placement=("cpu", "float32")):
    """Run ``groups`` as Ray tasks (one CPU each) on a new or existing (``address``) cluster."""
    try:
        import ray
    except ImportError:
        raise DependencyError("the ray executor needs ray: pip install 'roadinterp[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": None}))
        started = True
    try:
        remote = ray.remote(num_cpus=1)(work)
        pending = {remote.remote(config_json, g, spec, save_dir, batched, task_obj, *placement): g for g in groups}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                for cell, row in zip(pending.pop(ref), ray.get(ref)):
                    on_row(cell, row)
    except BaseException:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def interrupts_deferred():
    """Block SIGINT/SIGTERM in the main thread for a moment (delivered when the block ends)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
