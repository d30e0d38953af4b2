"""`wit download`'s local runner: img2dataset's ``download()`` on our own pool of spawned worker
processes (a worker that dies is noticed, its shard retried a bounded number of times, then
reported), with a progress bar fed by the workers, img2dataset's output sent to a log, and one
run per output folder at a time."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections import Counter, deque
from multiprocessing.connection import wait

from wit_builder.core import WitError, is_local, read_json_or_none
from wit_builder.download import InputShard, Plan, img2dataset_kwargs, shard_name
from wit_builder.download_layout import WORK

__all__ = ["run_local", "run_lock", "ShardPool"]


# --------------------------------------------------------------------------------------------
# progress bar (parent side)
# --------------------------------------------------------------------------------------------
class _Progress:
    """tqdm bar fed by the workers' ``_wit/progress/NNNNN.json`` files (local outputs only)."""

    def __init__(self, out: str, shards: list[InputShard], done: set[int], stream):
        from tqdm import tqdm
        self.out = out
        self.todo = [s for s in shards if s.shard_id not in done]
        self.base = sum(s.rows for s in shards if s.shard_id in done)
        self.bar = tqdm(total=sum(s.rows for s in shards), initial=self.base, unit="img",
                        desc="download", file=stream, dynamic_ncols=True, smoothing=0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wit-progress", daemon=True)

    def _poll(self):
        count = success = 0
        for s in self.todo:
            rec = read_json_or_none(f"{self.out}/{WORK}/progress/{shard_name(s.shard_id)}.json")
            if isinstance(rec, dict):
                count += int(rec.get("count", 0))
                success += int(rec.get("successes", 0))
        new = self.base + count - self.bar.n
        if new > 0:
            self.bar.update(new)
        if count:  # success rate of this run's images so far
            self.bar.set_postfix(success=f"{100 * success / count:.1f}%", refresh=False)

    def _loop(self):
        while not self._stop.wait(0.5):
            self._poll()

    def __enter__(self):
        if is_local(self.out):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if is_local(self.out):
            self._poll()
        self.bar.close()


@contextlib.contextmanager
def _redirect_fds(log_path: str):
    """Send fd 1 and 2 (img2dataset's prints, its workers' and logger's) to ``log_path``.

    Yields a text stream on the original stderr for our own progress bar.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = open(log_path, "ab")
    stream = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield stream
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        stream.close()


@contextlib.contextmanager
def _wit_classes_bound(distributor):
    """Make img2dataset's ``download()`` use our writer and logger-process classes and our
    process pool (``distributor``) in place of its multiprocessing distributor.

    ``download()`` looks its writer class (``WebDatasetSampleWriter``, ``ParquetSampleWriter``,
    ``FilesSampleWriter``: per ``output_format``), ``LoggerProcess`` and
    ``multiprocessing_distributor`` up by name in ``img2dataset.main`` when it runs; the classes
    travel to the spawned processes by reference (module and name), not by value.
    """
    import img2dataset  # noqa: F401 - the package binds the name `main` to a function

    from wit_builder.download_worker import I2D_NAMES, WRITERS, WitLoggerProcess
    i2d_main = sys.modules["img2dataset.main"]
    formats = sorted(WRITERS)
    names = (*(I2D_NAMES[f] for f in formats), "LoggerProcess", "multiprocessing_distributor")
    originals = [getattr(i2d_main, name) for name in names]
    for name, value in zip(names, (*(WRITERS[f] for f in formats), WitLoggerProcess, distributor)):
        setattr(i2d_main, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, originals):
            setattr(i2d_main, name, value)


# --------------------------------------------------------------------------------------------
# the process pool (in place of img2dataset's multiprocessing distributor)
# --------------------------------------------------------------------------------------------
TASKS_PER_WORKER = 5  # img2dataset's maxtasksperchild: a fresh process now and then bounds leaks


def _shard_worker(downloader, conn) -> None:
    """A worker process: download each shard the parent sends, answer img2dataset's (ok, row)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group; the parent ends us
    for _ in range(TASKS_PER_WORKER):
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        conn.send(downloader(task))


class _Worker:
    """One spawned worker process and the pipe to it; ``task`` is the shard it holds."""

    def __init__(self, ctx, downloader):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_shard_worker, args=(downloader, child), daemon=True,
                                name="wit-download-worker")
        self.proc.start()
        child.close()
        self.task = None
        self.served = 0

    def assign(self, task) -> bool:
        self.task = task
        try:
            self.conn.send(task)
        except OSError:  # it died while idle: the caller sees it as a death with this task
            return False
        return True

    def result(self):
        """``("done", (ok, row))``, ``("dead", why)`` or None while the shard is running."""
        if self.conn.poll():
            try:
                answer = self.conn.recv()
            except (EOFError, OSError):
                return "dead", self.death()
            self.task, self.served = None, self.served + 1
            return "done", answer
        if not self.proc.is_alive():
            return "dead", self.death()
        return None

    def death(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = f"its worker process was killed by {name}"
            return why + (" (the out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else "")
        return f"its worker process exited with code {code} in the middle of it"

    def stop(self, kill: bool) -> None:
        if not kill:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class ShardPool:
    """img2dataset's distributor interface (``(processes_count, downloader, reader, subjob_size,
    max_shard_retry)``) on our own spawned worker processes, so that a worker that dies (kill -9,
    the out-of-memory killer) is noticed at once: img2dataset's ``Pool.imap_unordered`` waits
    forever for the result of a dead worker. A shard whose worker died, or that failed, is tried
    again up to ``max_shard_retry`` times; shards still lost to a dead worker end up in ``dead``
    (shard id -> what happened), which :func:`run_local` reports."""

    def __init__(self, out: str):
        self.out = out
        self.dead: dict[int, str] = {}

    def __call__(self, processes_count, downloader, reader, _subjob_size, max_shard_retry):
        ctx = multiprocessing.get_context("spawn")
        tasks, again, tries = iter(reader), deque(), Counter()
        idle: list[_Worker] = []
        busy: list[_Worker] = []

        def lost(task, why: str, died: bool):
            shard = task[0]
            tries[shard] += 1
            if tries[shard] <= max_shard_retry:
                print(f"wit: shard {shard_name(shard)}: {why}; trying again ({tries[shard]}/{max_shard_retry})",
                      flush=True)
                again.append(task)
            elif died:
                self.dead[shard] = f"{why}, on try {tries[shard]} of {max_shard_retry + 1}"
            else:
                print(f"wit: shard {shard_name(shard)}: {why} after {tries[shard]} tries; "
                      "re-run the same command to retry it", flush=True)

        clean = False
        try:
            while True:
                while len(busy) < max(1, processes_count):
                    task = again.popleft() if again else next(tasks, None)
                    if task is None:
                        break
                    while idle and not idle[-1].proc.is_alive():
                        idle.pop().stop(kill=True)
                    worker = idle.pop() if idle else _Worker(ctx, downloader)
                    worker.assign(task)
                    busy.append(worker)
                if not busy:
                    clean = True
                    break
                wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
                for worker in list(busy):
                    task, answer = worker.task, worker.result()
                    if answer is None:
                        continue
                    busy.remove(worker)
                    if answer[0] == "dead":
                        _remove_partials(self.out, worker.proc.pid)
                        lost(task, answer[1], died=True)
                        worker.stop(kill=True)
                        continue
                    if not answer[1][0]:
                        lost(task, "img2dataset could not download it (see _wit/img2dataset.log)", died=False)
                    if worker.served >= TASKS_PER_WORKER:
                        worker.stop(kill=False)
                    else:
                        idle.append(worker)
        finally:
            for worker in idle + busy:
                worker.stop(kill=not clean)


def _remove_partials(out: str, pid: int) -> None:
    """Drop the private files a dead worker left half-written (``_wit/partial/*.PID-*``)."""
    import glob
    import shutil
    for path in glob.glob(os.path.join(out, WORK, "partial", f"*.{pid}-*")):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def run_lock(out: str):
    """One ``wit download`` at a time per output folder (local outputs; a dead owner's lock is taken over)."""
    if not is_local(out):
        yield
        return
    path = os.path.join(out.removeprefix("file://"), WORK, "lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                with open(path) as fh:
                    owner = int(fh.read().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _alive(owner):
                raise WitError(f"another `wit download` (pid {owner}) is writing to {out}; "
                               f"wait for it, or remove {path} if that process is gone") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its owner was killed
    else:
        raise WitError(f"could not take the lock {path}")
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stage_inputs(out: str, shards: list[InputShard]) -> str:
    """img2dataset's url_list: the folder of the shards' samples (``_wit/input/NNNNN.parquet``, the
    planning wrote them; sorted names = shard order, each one shard of at most
    ``number_sample_per_shard`` rows)."""
    if not is_local(out):
        raise WitError("the local img2dataset runner needs a local --out; use a Beam --runner for remote paths")
    stage = os.path.join(out, WORK, "input")
    if sorted(os.path.join(stage, n) for n in os.listdir(stage) if n.endswith(".parquet")) != \
            [s.path.removeprefix("file://") for s in shards]:
        raise WitError(f"{stage} does not hold exactly the planned shards; delete {out}/{WORK}/parts.json "
                       "and re-run to plan again")
    return stage


def run_local(plan: Plan, quiet: bool, progress: bool) -> None:
    """Download ``plan``'s remaining shards with img2dataset's ``download()`` on a
    :class:`ShardPool`; a shard lost to dead workers every try ends in a :class:`WitError`
    (after the other shards finished)."""
    if threading.current_thread() is not threading.main_thread():
        raise WitError("the local runner must be called from the main thread (img2dataset installs a "
                       "SIGINT handler); call it from the main thread or use runner='DirectRunner'")
    import img2dataset
    stage = _stage_inputs(plan.out, plan.shards)
    kwargs = img2dataset_kwargs(plan.options, plan.extra_columns, plan.per_shard)
    previous_sigint = signal.getsignal(signal.SIGINT)
    log_path = os.path.join(plan.out, WORK, "img2dataset.log")
    redirect = _redirect_fds(log_path) if quiet else contextlib.nullcontext(sys.stderr)
    pool = ShardPool(plan.out)
    try:
        with redirect as stream, _wit_classes_bound(pool):
            bar = _Progress(plan.out, plan.shards, plan.done, stream) if progress else contextlib.nullcontext()
            with bar:
                img2dataset.download(url_list=stage, output_folder=plan.out, **kwargs)
    except SystemExit:  # img2dataset's SIGINT handler exits; report it as an interrupt
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    if pool.dead:
        lost = "; ".join(f"shard {shard_name(i)}: {why}" for i, why in sorted(pool.dead.items()))
        raise WitError(f"{lost}. Finished shards are kept: re-run the same command to resume "
                       "(fewer --processes or --threads if memory ran out)")
