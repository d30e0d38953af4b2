"""`wit download`'s local runner: img2dataset's own multiprocessing distributor, with a progress bar
fed by the workers, img2dataset's output sent to a log, and one run per output folder at a time."""
from __future__ import annotations

import contextlib
import os
import sys
import threading

from wit_builder.core import WitError, is_local, read_json_or_none
from wit_builder.download import InputShard, Plan, img2dataset_kwargs, shard_name
from wit_builder.download_layout import WORK

__all__ = ["run_local", "run_lock"]


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
def _wit_classes_bound():
    """Make img2dataset's ``download()`` use our writer and logger-process classes.

    ``download()`` looks ``WebDatasetSampleWriter`` and ``LoggerProcess`` up by name in
    ``img2dataset.main`` when it runs; the classes travel to the spawned processes by reference
    (module and name), not by value.
    """
    import img2dataset  # noqa: F401 - the package binds the name `main` to a function

    from wit_builder.download_worker import WitLoggerProcess, WitShardWriter
    i2d_main = sys.modules["img2dataset.main"]
    originals = i2d_main.WebDatasetSampleWriter, i2d_main.LoggerProcess
    i2d_main.WebDatasetSampleWriter, i2d_main.LoggerProcess = WitShardWriter, WitLoggerProcess
    try:
        yield
    finally:
        i2d_main.WebDatasetSampleWriter, i2d_main.LoggerProcess = originals


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
    """A folder whose sorted *.parquet are exactly the planned inputs, in shard order."""
    if not is_local(out) or not all(is_local(s.path) for s in shards):
        raise WitError("the local img2dataset runner needs local --pairs and --out; "
                       "use a Beam --runner for remote paths")
    stage = os.path.join(out, WORK, "input")
    if os.path.isdir(stage):
        for name in os.listdir(stage):
            os.unlink(os.path.join(stage, name))
    os.makedirs(stage, exist_ok=True)
    for s in shards:
        os.symlink(os.path.abspath(s.path.removeprefix("file://")),
                   os.path.join(stage, f"{shard_name(s.shard_id)}.parquet"))
    return stage


def run_local(plan: Plan, quiet: bool, progress: bool) -> None:
    """Download ``plan``'s remaining shards with img2dataset's own multiprocessing distributor."""
    import signal
    if threading.current_thread() is not threading.main_thread():
        raise WitError("the local runner must be called from the main thread (img2dataset installs a "
                       "SIGINT handler); call it from the main thread or use runner='DirectRunner'")
    import img2dataset
    stage = _stage_inputs(plan.out, plan.shards)
    kwargs = img2dataset_kwargs(plan.options, plan.extra_columns, plan.per_shard)
    previous_sigint = signal.getsignal(signal.SIGINT)
    log_path = os.path.join(plan.out, WORK, "img2dataset.log")
    redirect = _redirect_fds(log_path) if quiet else contextlib.nullcontext(sys.stderr)
    try:
        with redirect as stream, _wit_classes_bound():
            bar = _Progress(plan.out, plan.shards, plan.done, stream) if progress else contextlib.nullcontext()
            with bar:
                img2dataset.download(url_list=stage, output_folder=plan.out, **kwargs)
    except SystemExit:  # img2dataset's SIGINT handler exits; report it as an interrupt
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
