"""Where a search's jobs run: this process, a pool of spawned local workers, or Ray.

An :class:`Executor` takes :class:`~roadinterp.search.jobs.Job` objects and hands each
one's :class:`~roadinterp.search.jobs.JobResult` back in the search's process, as each
finishes (nnsight's backends: one interface, several places to run). Every executor runs
the same function, :func:`roadinterp.search.jobs.run_job`, one floor down; nothing here
calls back into the search. Workers are spawned clean, die with their parent, and leave
Ctrl-C to it; :func:`shippable_task` decides whether a task must travel to them as an object.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Protocol

from roadinterp.errors import ConfigError, DependencyError
from roadinterp.search.jobs import Job, JobResult, run_job

OnResult = Callable[[Job, JobResult], None]


class Executor(Protocol):
    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        """Run every job; call ``on_result`` in this process as each one finishes."""


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


class LocalExecutor:
    """Every job in this process, one after another."""

    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        for job in jobs:
            on_result(job, run_job(job))


class PoolExecutor:
    """Jobs in ``workers`` spawned processes (each loads the frozen model once)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn: workers start clean (no forked torch threads); each loads the cached model once.
        # They are started with SIGINT/SIGTERM blocked (inherited), so a Ctrl-C during their start-up reaches
        # only this process, which stops them; the parent gets it as soon as the block ends.
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            with interrupts_deferred():
                futures = {pool.submit(run_job, job): job for job in jobs}
            while futures:
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for fut in done:
                    on_result(futures.pop(fut), fut.result())
        except BaseException:
            # interrupted or failed: stop the running cells now instead of waiting for them to finish. SIGKILL,
            # not SIGTERM: a worker still starting up has SIGTERM blocked, and workers hold nothing to save
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


class RayExecutor:
    """Jobs as Ray tasks (one CPU each) on a new or existing (``address``) cluster."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        try:
            import ray
        except ImportError:
            raise DependencyError("the ray executor needs ray: pip install 'roadinterp[ray]'") from None
        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     **({} if self.address else {"num_cpus": None}))
            started = True
        pending: dict = {}
        try:
            remote = ray.remote(num_cpus=1)(run_job)
            pending = {remote.remote(job): job for job in jobs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    on_result(pending.pop(ref), ray.get(ref))
        except BaseException:
            for ref in list(pending):
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()


def make_executor(executor: str, workers: int = 1, ray_address: str | None = None, n_jobs: int = 2) -> Executor:
    """The executor for RunOptions' ``executor``/``workers``: ``local`` is this process (one
    worker, or one job) or a pool; ``ray`` a cluster."""
    if executor == "ray":
        return RayExecutor(ray_address)
    if executor != "local":
        raise ConfigError(f"executor must be local or ray, got {executor!r}")
    return LocalExecutor() if workers <= 1 or n_jobs <= 1 else PoolExecutor(workers)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT/SIGTERM for a moment; one that arrives meanwhile is delivered when the block ends.

    Two layers, because each alone leaks. The signal mask is what spawned children inherit, so
    a worker starts with both blocked and never dies half-started. But a mask set in the main
    thread does not stop the kernel handing the signal to another thread (the pool's manager
    thread, torch's), whose C handler then runs the Python handler in the main thread at once,
    in the middle of starting a worker: the worker is left reading a closed pipe and prints
    ``EOFError: Ran out of input``. So the Python handlers are swapped for ones that only
    record the signal, and the recorded one is raised again after the old handlers are back.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    caught: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in sigs}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(sigs))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a blocked pending signal runs the recorder now
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])
