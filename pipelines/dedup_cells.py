"""The neighbour search and clustering of ``wit dedup run`` on Beam (library:
:mod:`wit_builder.dedup_cells`, which the module text explains).

Four short pipelines over the embedding files, with the launcher holding only bounded things in
between (the sample, the centroids, the edge list: pairs at or above the threshold)::

    files -> SampleRows          -> WORK/sample.npz              (bottom-k sample + row count)
    launcher: train the quantizer -> WORK/quantizer.pkl
    files -> SearchCells         -> WORK/best/<file>.parquet, WORK/edges/<file>.parquet
             (pieces joined per search group, and answers merged per file, by JoinPerKey: each
              worker pre-joins its own files' pieces before the shuffle, up to JOIN_BUDGET bytes)
    launcher: components + representatives from the edges
    files -> CheckRepresentatives -> WORK/check/*.parquet        (only when some member's similarity
                                                                  to its representative is unknown,
                                                                  and the files holding them exceed
                                                                  LAUNCHER_CHECK_ROWS rows: else the
                                                                  launcher reads those files itself;
                                                                  the pipeline reads only them)
    files -> WriteDecisions      -> WORK/decisions/<file>.parquet
    launcher: the parts -> OUT/decisions.parquet (streamed, one part at a time)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pickle
import threading
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder import dedup_cells as dc
from wit_builder.core import WitError, atomic_open, atomic_write_parquet, exists, filesystem, glob_files, open_read
from wit_builder.schemas import DECISIONS_SCHEMA

WORK = ".wit-work-cells"


def _write_npz(path: str, **arrays) -> None:
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def _load_npz(path: str) -> dict:
    with open_read(path) as fh:
        z = np.load(fh)
        return {name: z[name] for name in z.files}


def _load_pickle(path: str):
    with open_read(path) as fh:
        return pickle.load(fh)


def _work_folder(work: str) -> None:
    """An empty work folder (local or remote): what a killed run left is removed first."""
    fs, inner = filesystem(work)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)
    for sub in ("best", "edges", "check", "decisions"):
        fs.makedirs(f"{inner}/{sub}", exist_ok=True)


def search_threads(beam_options: BeamOptions) -> int:
    """Slices each worker multiplies at once: the local cores shared among the DirectRunner's worker
    processes (1 worker on 2 cores: 2); 1 on a distributed runner (Dataflow runs a Python process
    per vCPU). Each product runs on one BLAS thread, so the result is the same for any count."""
    if beam_options.is_local:
        return max(1, (os.cpu_count() or 1) // max(1, int(beam_options.workers)))
    return 1


class _OneThread:
    """numpy's BLAS and OpenMP (faiss) on one thread while a step of the search runs: the
    parallelism is the workers and, inside one, :func:`search_threads` slices multiplied at once
    (BLAS threads in each of N workers would put N x cores spinning threads on the cores), and a
    product's rounding in OpenBLAS depends on its thread count, so one thread keeps the
    similarities bit-identical for any worker count.

    A worker process may run several bundles at once on threads (the DirectRunner's
    multi_threading mode; Dataflow's SDK harness threads). A pthreads OpenBLAS (numpy's) has one
    thread count for the whole process: it is set when the first thread enters and restored when
    the last one leaves (a count under a lock), so a thread leaving never gives BLAS its threads
    back while another is inside a product; threadpoolctl lets only one Python thread change it,
    so the entering (leaving) thread takes that role first. OpenMP's count (faiss, and faiss's
    OpenMP-built BLAS) belongs to the calling thread: each thread sets and restores its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._shared_limit = None      # the process-wide limit while any thread is inside
        self._shared = self._per_thread = None

    def _libraries(self):
        if self._shared is None:          # finding the loaded libraries takes ~10 ms: once a process
            import faiss  # noqa: F401  (its OpenMP must be loaded to be found)
            from threadpoolctl import ThreadpoolController
            every = ThreadpoolController()
            per_thread = [lib.filepath for lib in every.lib_controllers
                          if lib.user_api == "openmp" or getattr(lib, "threading_layer", None) == "openmp"]
            self._per_thread = every.select(filepath=per_thread)
            self._shared = every.select(filepath=[lib.filepath for lib in every.lib_controllers
                                                  if lib.filepath not in per_thread])
        return self._shared, self._per_thread

    @staticmethod
    def _take_control():
        """threadpoolctl (3.8+) ignores a pthreads OpenBLAS limit set from any thread but the first
        one that set it; the caller holds the lock, so it may take that role."""
        import threadpoolctl
        clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            shared, per_thread = self._libraries()
            if self._inside == 0:
                self._take_control()
                self._shared_limit = shared.limit(limits=1)
            self._inside += 1
        own = per_thread.limit(limits=1)
        try:
            yield
        finally:
            own.restore_original_limits()
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    self._take_control()
                    self._shared_limit.restore_original_limits()
                    self._shared_limit = None
                    self._take_control()


_one_thread = _OneThread()


def _remove_folder(work: str) -> None:
    fs, inner = filesystem(work)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


class _SampleFile(beam.DoFn):
    def __init__(self, size: int, cutoff: int | None):
        self.size, self.cutoff = size, cutoff

    def process(self, item):
        index, path = item
        rows = dc.read_rows(path, index)
        h = dc.key_hashes(rows.keys)
        ids, vectors = rows.ids, rows.vectors
        if self.cutoff is not None:             # only rows that may be in the sample travel
            keep = h < self.cutoff
            h, ids, vectors = h[keep], ids[keep], vectors[keep]
        Metrics.counter("wit.dedup", "sample_rows_sent").inc(min(len(h), self.size))
        yield len(rows), dc.bottom(h, ids, vectors, self.size)


class _MergeSamples(beam.CombineFn):
    def __init__(self, size: int):
        self.size = size

    def create_accumulator(self):
        return 0, None

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), dc.merge_bottom([a[1] for a in accs], self.size)

    def extract_output(self, acc):
        return acc


class SampleRows(beam.PTransform):
    """(file index, path) -> one (rows, (hashes, ids, vectors)) with the bottom ``size`` rows by key
    hash among the rows whose hash is below ``cutoff`` (None: all rows; see
    :func:`wit_builder.dedup_cells.sample_cutoff`)."""

    def __init__(self, size: int, cutoff: int | None = None):
        super().__init__()
        self.size, self.cutoff = size, cutoff

    def expand(self, files):
        return (files | "Sample" >> beam.ParDo(_SampleFile(self.size, self.cutoff))
                | "Merge" >> beam.CombineGlobally(_MergeSamples(self.size)))


class _AssignFile(beam.DoFn):
    def __init__(self, quantizer_path: str):
        self.quantizer_path = quantizer_path

    def setup(self):
        self.q = _load_pickle(self.quantizer_path)

    def process(self, item):
        index, path = item
        rows = dc.read_rows(path, index)
        with _one_thread():
            pieces = list(dc.group_pieces(self.q, rows, dc.key_hashes(rows.keys)))
        for group, piece in pieces:
            Metrics.counter("wit.dedup", "rows_sent").inc(len(piece[0]))
            yield group, piece


# Bytes of values one worker joins per key before it sends them on (the pieces of the search
# groups; the answers per file): bounds what a worker holds however large its bundle. At 1M
# vectors on 2 local workers (bench/scale.py) 8, 32 and 256 MiB searched equally fast.
JOIN_BUDGET = 64 << 20


def _nbytes(value) -> int:
    """Approximate size of a value: its numpy arrays (an object array's strings at 64 bytes an
    element), through tuples, lists and dataclasses (a piece, an ``Answers``)."""
    if isinstance(value, np.ndarray):
        return value.nbytes + (64 * value.size if value.dtype == object else 0)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 64


class _JoinInBundle(beam.DoFn):
    """(key, value) -> (key, the values of the key joined by ``join``) within a bundle, before the
    shuffle. Each worker joins its own part (the pieces of a search group come from every file:
    sent one by one they would be files x cells elements, quadratic in the corpus), but holds
    at most ~``budget`` bytes: past it, everything held is sent on, joined, and the table starts
    empty. (A CombinePerKey lifted by the runner would hold up to 100,000 keys whatever their
    size: on the DirectRunner a worker's whole share of the corpus.)"""

    def __init__(self, join, budget: int):
        self.join, self.budget = join, budget

    def start_bundle(self):
        self.table, self.held = {}, 0

    def process(self, item):
        key, value = item
        self.table.setdefault(key, []).append(value)
        self.held += _nbytes(value)
        if self.held > self.budget:
            Metrics.counter("wit.dedup", "join_flushes").inc()
            yield from self._drain()

    def _drain(self):
        table, self.table, self.held = self.table, {}, 0
        for key, values in table.items():
            yield key, (self.join(values) if len(values) > 1 else values[0])

    def finish_bundle(self):
        for kv in self._drain():
            yield WindowedValue(kv, GlobalWindow().max_timestamp(), (GlobalWindow(),))


class _JoinGroup(beam.DoFn):
    def __init__(self, join):
        self.join = join

    def process(self, item):
        key, values = item
        values = list(values)
        yield key, (self.join(values) if len(values) > 1 else values[0])


class JoinPerKey(beam.PTransform):
    """(key, value) -> (key, all its values joined by ``join``: a list of values -> one value,
    associative, any order): joined within each bundle up to ``budget`` bytes, shuffled, joined
    again (what several workers, or one worker's flushes, sent)."""

    def __init__(self, join, budget: int = JOIN_BUDGET):
        super().__init__()
        self.join, self.budget = join, budget

    def expand(self, pairs):
        return (pairs | "JoinInBundle" >> beam.ParDo(_JoinInBundle(self.join, self.budget))
                | "Shuffle" >> beam.GroupByKey()
                | "Join" >> beam.ParDo(_JoinGroup(self.join)))


class _SearchGroup(beam.DoFn):
    def __init__(self, threshold: float, k: int, threads: int = 1):
        self.threshold, self.k, self.threads = threshold, k, threads

    def process(self, item):
        (cell, i, j), piece = item
        with _one_thread():
            answers = dc.search_group([piece], self.threshold, self.k, same_block=(i == j), threads=self.threads)
        Metrics.counter("wit.dedup", "groups").inc()
        yield from dc.answers_by_file(answers)


class _WriteAnswers(beam.DoFn):
    def __init__(self, work: str):
        self.work = work

    def process(self, item):
        f, a = item
        atomic_write_parquet(os.path.join(self.work, "best", f"{f:06d}.parquet"), dc.best_table(a))
        atomic_write_parquet(os.path.join(self.work, "edges", f"{f:06d}.parquet"), dc.edges_table(a))
        Metrics.counter("wit.dedup", "edges").inc(len(a.edge_q))
        yield f


class SearchCells(beam.PTransform):
    """(file index, path) -> per file, WORK/best and WORK/edges parquet (see the module text)."""

    def __init__(self, quantizer_path: str, work: str, threshold: float, k: int, threads: int = 1,
                 join_budget: int | None = None):
        super().__init__()
        self.quantizer_path, self.work, self.threshold, self.k = quantizer_path, work, threshold, k
        self.threads, self.join_budget = threads, JOIN_BUDGET if join_budget is None else join_budget

    def expand(self, files):
        return (files
                | "Spread" >> beam.Reshuffle()
                | "Assign" >> beam.ParDo(_AssignFile(self.quantizer_path))
                | "ByGroup" >> JoinPerKey(dc.concat_pieces, self.join_budget)
                | "Search" >> beam.ParDo(_SearchGroup(self.threshold, self.k, self.threads))
                | "ByFile" >> JoinPerKey(functools.partial(dc.merge_answers, k=self.k), self.join_budget)
                | "Write" >> beam.ParDo(_WriteAnswers(self.work)))


class _EmitForCheck(beam.DoFn):
    """Rows whose similarity to their representative is unknown, and those representatives."""

    def __init__(self, check_path: str, chunk: int):
        self.check_path, self.chunk = check_path, chunk

    def setup(self):
        z = _load_npz(self.check_path)
        self.ids, self.reps = z["ids"], z["reps"]
        rep_ids, counts = np.unique(self.reps, return_counts=True)
        self.rep_ids = rep_ids
        self.rep_chunks = -(-counts // self.chunk)

    def process(self, item):
        index, path = item
        rows = dc.read_rows(path, index)
        if not len(rows):
            return
        found = np.isin(rows.ids, self.ids)
        for r in np.nonzero(found)[0]:
            rep = int(self.reps[np.searchsorted(self.ids, rows.ids[r])])
            chunks = int(self.rep_chunks[np.searchsorted(self.rep_ids, rep)])
            yield (rep, int(rows.ids[r]) % chunks), ("m", int(rows.ids[r]), rows.vectors[r])
        is_rep = np.isin(rows.ids, self.rep_ids)
        for r in np.nonzero(is_rep)[0]:
            rep = int(rows.ids[r])
            for c in range(int(self.rep_chunks[np.searchsorted(self.rep_ids, rep)])):
                yield (rep, c), ("r", rep, rows.vectors[r])


class _Check(beam.DoFn):
    def __init__(self, work: str):
        self.work = work

    def process(self, item):
        (rep, chunk), members = item
        members = list(members)
        rv = [v for kind, _, v in members if kind == "r"]
        ids = np.array([i for kind, i, _ in members if kind == "m"], np.int64)
        if not len(ids):
            return
        vec = np.stack([v for kind, _, v in members if kind == "m"])
        with _one_thread():
            sims = vec @ rv[0] if rv else np.full(len(ids), -np.inf, np.float32)
        atomic_write_parquet(os.path.join(self.work, "check", f"{rep}-{chunk}.parquet"),
                             pa.table({"id": ids, "sim": sims.astype(np.float32)}))
        yield len(ids)


class CheckRepresentatives(beam.PTransform):
    """Similarity of each listed member to its representative, exactly, from the vectors."""

    def __init__(self, check_path: str, work: str, chunk: int = 8192):
        super().__init__()
        self.check_path, self.work, self.chunk = check_path, work, chunk

    def expand(self, files):
        return (files | "Emit" >> beam.ParDo(_EmitForCheck(self.check_path, self.chunk))
                | "ByRepresentative" >> beam.GroupByKey()
                | "Check" >> beam.ParDo(_Check(self.work)))


class _Decide(beam.DoFn):
    def __init__(self, clusters_path: str, work: str):
        self.clusters_path, self.work = clusters_path, work

    def setup(self):
        self.clusters = _load_pickle(self.clusters_path)

    def process(self, item):
        index, path = item
        best_path = os.path.join(self.work, "best", f"{index:06d}.parquet")
        best = _read_parquet(best_path) if exists(best_path) else None
        table = dc.file_decisions(path, index, best, self.clusters)
        atomic_write_parquet(os.path.join(self.work, "decisions", f"{index:06d}.parquet"), table)
        yield index


class WriteDecisions(beam.PTransform):
    def __init__(self, clusters_path: str, work: str):
        super().__init__()
        self.clusters_path, self.work = clusters_path, work

    def expand(self, files):
        return (files | "Spread" >> beam.Reshuffle()
                | "Decide" >> beam.ParDo(_Decide(self.clusters_path, self.work)))


# Members to check (and their representatives) held by files of at most this many rows in all: the
# launcher reads those files itself (~4 µs a row: 2 s at the bound) rather than start a pipeline
# (~3.4 s before it reads a file). Above it, the pipeline reads only the files that hold them.
LAUNCHER_CHECK_ROWS = 500_000


def _check_on_launcher(files: list[str], ids: np.ndarray, reps: np.ndarray):
    """What CheckRepresentatives computes, on the launcher, for members held by a few files (a
    pipeline would start its workers and read every file for them): (member ids sorted, similarity
    to their representative; -inf where the representative has no vector)."""
    wanted = np.unique(np.concatenate([ids, reps]))
    vectors = {}
    for f in np.unique(dc.split_ids(wanted)[0]):
        rows = dc.read_rows(files[int(f)], int(f))
        if not len(rows):
            continue
        pos = np.minimum(np.searchsorted(rows.ids, wanted), len(rows) - 1)
        for r in np.nonzero(rows.ids[pos] == wanted)[0]:
            vectors[int(wanted[r])] = rows.vectors[pos[r]]
    out_ids, out_sims = [], []
    for rep in np.unique(reps):
        members = [int(i) for i in ids[reps == rep] if int(i) in vectors]
        if not members:
            continue
        vec = np.stack([vectors[i] for i in members])
        with _one_thread():
            sims = vec @ vectors[int(rep)] if int(rep) in vectors else np.full(len(members), -np.inf, np.float32)
        out_ids.extend(members)
        out_sims.append(sims.astype(np.float32))
    out_ids = np.array(out_ids, np.int64)
    out_sims = np.concatenate(out_sims) if out_sims else np.zeros(0, np.float32)
    order = np.argsort(out_ids)
    return out_ids[order], out_sims[order]


def _read_parquet(path: str) -> pa.Table:
    with open_read(path) as fh:
        return pq.read_table(fh)


def _read_folder(folder: str) -> pa.Table | None:
    """All parquet files of a work folder (sorted by name: the same table whatever wrote them when)."""
    tables = [_read_parquet(f) for f in glob_files(folder + "/*.parquet")
              if not os.path.basename(f).startswith(".")]
    return pa.concat_tables(tables) if tables else None


# The DirectRunner's shuffle in memory, per byte shuffled: the launching process holds ~4.4-5.5x
# the bytes and each worker ~4.8x its share (bench/scale.py --floor-only, Beam 2.78, 2 worker
# processes: 1M-4M rows of 256-d float16, 0.5-1.9 GiB shuffled; all processes together
# 8.8-10.3x). The search shuffles every row once (1.1x: rows probed in a second cell) as its
# float16 vector plus ids, blocks and its key (~90 bytes). Measured with 2 workers only.
LOCAL_SHUFFLE_MEMORY = 10.0
MEMORY_CHECK_ENV = "WIT_DEDUP_MEMORY_CHECK"     # "warn": never refuse, only warn


def local_search_memory(rows: int, dim: int, value_bytes: int = 2) -> int:
    """Bytes the DirectRunner's processes together hold for the search's shuffle (an estimate;
    ``value_bytes``: 2 for float16 vectors, 4 where one cell searches exactly in float32)."""
    return int(LOCAL_SHUFFLE_MEMORY * 1.1 * rows * (value_bytes * dim + 90))


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh) if v.split()}
    except (OSError, ValueError):
        return {}


def check_local_memory(rows: int, dim: int, beam_options: BeamOptions, value_bytes: int = 2) -> None:
    """Before the search on the DirectRunner: a WitError when its shuffle cannot fit this machine's
    memory and swap (it would be killed mid-run; ``WIT_DEDUP_MEMORY_CHECK=warn`` turns it into a
    warning, for an estimate that is wrong), a warning on stderr when it may not fit what is free
    now. Distributed runners shuffle outside the workers' memory: no check."""
    import sys

    info = _meminfo()
    if not beam_options.is_local or "MemTotal" not in info:
        return
    need = local_search_memory(rows, dim, value_bytes)
    gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
    room = info["MemTotal"] + info.get("SwapFree", 0)
    what = (f"the DirectRunner would hold ~{gb(need)} for the neighbour search's shuffle "
            f"({rows:,} rows of {dim}-d vectors)")
    if need > room and os.environ.get(MEMORY_CHECK_ENV, "").strip().lower() != "warn":
        raise WitError(f"{what[0].upper()}{what[1:]}, more than this machine's {gb(room)} of memory and swap; run it "
                       "on a distributed runner (--runner DataflowRunner ...) or on fewer embeddings at a time "
                       f"({MEMORY_CHECK_ENV}=warn runs it anyway)")
    free = info.get("MemAvailable", room)
    if need > free:
        print(f"wit dedup: warning: {what}, {gb(free)} is available now", file=sys.stderr)


def cluster_files(files: list[str], out: str, params: dc.CellParams,
                  beam_options: BeamOptions = BeamOptions(), *, keep_work: bool = False) -> dict:
    """Embedding files -> OUT/decisions.parquet through the four pipelines; returns stats.
    ``keep_work``: leave OUT/.wit-work-cells (edges, answers) for inspection (benchmarks)."""
    work = os.path.join(out, WORK)
    _work_folder(work)
    files = sorted(files)               # row ids (and so ties) do not depend on the order given
    indexed = list(enumerate(files))
    t0 = time.time()
    file_rows = []
    for f in files:
        with open_read(f) as fh:
            file_rows.append(pq.ParquetFile(fh).metadata.num_rows)
    n_meta = sum(file_rows)
    size = dc.sample_size(n_meta, params)

    def sample(cutoff):
        return lambda p: (
            p | "Files" >> beam.Create(indexed) | "SampleRows" >> SampleRows(size, cutoff)
            | "Save" >> beam.Map(lambda acc: _write_npz(os.path.join(work, "sample.npz"), n=np.int64(acc[0]),
                                                        vectors=acc[1][2] if acc[1] else np.zeros((0, 1), np.float32))))
    cutoff = dc.sample_cutoff(n_meta, size)
    run_pipeline(sample(cutoff), beam_options)
    z = _load_npz(os.path.join(work, "sample.npz"))
    if cutoff is not None and len(z["vectors"]) < min(size, int(z["n"])):   # too few below it: all rows
        run_pipeline(sample(None), beam_options)
        z = _load_npz(os.path.join(work, "sample.npz"))
    n = int(z["n"])
    if n and z["vectors"].ndim == 2:
        try:
            check_local_memory(n, int(z["vectors"].shape[1]), beam_options,
                               value_bytes=4 if dc.cell_count(n, params) == 1 else 2)
        except WitError:
            _remove_folder(work)      # nothing of this run is left (the embedding files stay, reused)
            raise
    q = dc.train_quantizer(z["vectors"], n, params)
    qpath = os.path.join(work, "quantizer.pkl")
    with atomic_open(qpath) as fh:
        pickle.dump(q, fh)
    t1 = time.time()
    run_pipeline(lambda p: (p | "Files" >> beam.Create(indexed)
                            | "SearchCells" >> SearchCells(qpath, work, params.threshold, params.k,
                                                         search_threads(beam_options))), beam_options)
    t2 = time.time()
    edges = _read_folder(os.path.join(work, "edges"))
    clusters, unknown, reps = dc.link_clusters(edges, params.threshold) if edges is not None else \
        dc.link_clusters(dc.edges_table(dc.merge_answers([], params.k)), params.threshold)
    checked_ids = checked_sims = None
    holding = np.unique(dc.split_ids(np.concatenate([unknown, reps]))[0]) if len(unknown) else []
    if len(unknown) and sum(file_rows[int(f)] for f in holding) <= LAUNCHER_CHECK_ROWS:
        checked_ids, checked_sims = _check_on_launcher(files, unknown, reps)    # no pipeline to start
    elif len(unknown):
        cpath = os.path.join(work, "check.npz")
        _write_npz(cpath, ids=unknown, reps=reps)
        run_pipeline(lambda p: (p | "Files" >> beam.Create([indexed[int(f)] for f in holding])
                                | "CheckRepresentatives" >> CheckRepresentatives(cpath, work, params.max_block)),
                     beam_options)
        checked = _read_folder(os.path.join(work, "check"))
        checked_ids = checked.column("id").to_numpy()
        checked_sims = checked.column("sim").to_numpy()
        order = np.argsort(checked_ids)
        checked_ids, checked_sims = checked_ids[order], checked_sims[order]
    clusters = dc.finish_clusters(clusters, params.threshold, checked_ids, checked_sims)
    cl_path = os.path.join(work, "clusters.pkl")
    with atomic_open(cl_path) as fh:
        pickle.dump(clusters, fh)
    t3 = time.time()
    run_pipeline(lambda p: (p | "Files" >> beam.Create(indexed)
                            | "WriteDecisions" >> WriteDecisions(cl_path, work)), beam_options)
    path = os.path.join(out, "decisions.parquet")
    with atomic_open(path) as fh:
        with pq.ParquetWriter(fh, DECISIONS_SCHEMA) as writer:
            for index in range(len(files)):
                writer.write_table(_read_parquet(os.path.join(work, "decisions", f"{index:06d}.parquet")))
    t4 = time.time()
    if not keep_work:
        _remove_folder(work)
    comp_sizes = np.unique(clusters.component, return_counts=True)[1] if len(clusters.ids) else np.zeros(0, np.int64)
    cl_sizes = np.unique(clusters.cluster, return_counts=True)[1] if len(clusters.ids) else np.zeros(0, np.int64)
    return {
        "n": n, "cells": q.cells, "split_cells": int((q.blocks > 1).sum()), "probes": params.probes,
        "margin": params.margin, "cell_size": params.cell_size, "sample": int(len(z["vectors"])),
        "edges": int(edges.num_rows) if edges is not None else 0,
        "duplicated_images": int(len(clusters.ids)), "components": int(len(comp_sizes)),
        "largest_component": int(comp_sizes.max()) if len(comp_sizes) else 0,
        "duplicate_clusters": int((cl_sizes > 1).sum()), "largest_cluster": int(cl_sizes.max()) if len(cl_sizes) else 1,
        "chained": clusters.chained, "checked_against_representative": int(len(unknown)),
        "dropped_duplicates": int((~clusters.kept).sum()),
        "seconds": {"sample_and_quantizer": round(t1 - t0, 3), "search": round(t2 - t1, 3),
                    "clusters": round(t3 - t2, 3), "decisions": round(t4 - t3, 3)},
    }
