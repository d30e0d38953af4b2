"""Near-duplicate search and clustering spread over workers: the library half of ``wit dedup run``.

The Beam wiring is ``pipelines/dedup.py`` (``ClusterDuplicates``); everything here is numpy/faiss
on one batch at a time, so no worker holds more than a bounded part of the corpus.

**Rows.** Embedding files are numbered in sorted path order; a row's id is ``file << 32 | row``
(its row in its embeddings file). Ties are broken by id, so the result depends only on the inputs.

**Cells** (a coarse quantizer on a bounded sample).
1. *Sample*: every file offers the rows with the smallest 63-bit hash of their key; the global
   bottom ``sample_size`` (= ``sample_per_cell`` x cells, capped) is a uniform sample whatever the
   file order or worker count.
2. *Quantizer*: ``cells = 1`` below ``exact_below`` rows (one cell: exact search over all pairs),
   else ``ceil(n / cell_size)``; spherical k-means (faiss, fixed seed, one thread) on the sample.
   Above ``FLAT_CENTROIDS`` centroids the nearest centroids are looked up in an HNSW graph over
   the centroids (built on one thread, so every worker has the same one), so the cost of assigning
   a row grows like the logarithm of the cells, not like the cells.
3. *Assignment*: each row lives in its nearest cell (its *home*) and is also sent, as a query
   only, to up to ``probes - 1`` further cells whose centroid is within ``margin`` cosine of its
   home's: a pair across a cell border is found from either side.
   With more than one cell the vectors travel to the search as float16 (half the shuffle; a
   similarity moves by about 0.001), and the search computes in float32.
4. *Blocks*: a cell whose estimated size (from the sample) is above ``max_block`` rows is split
   into ``b`` blocks by key hash; the group ``(cell, i, j)`` (i <= j) holds blocks i and j and
   searches only the pairs across them (i < j) or inside i (i = j). No group holds more than
   about 2 x ``max_block`` rows.

**Search** inside a group: one GEMM per slice of rows; each pair of rows with at least one home
row is computed once and both rows learn from it (a slice of home rows against itself and the
home rows after it; the probe rows against the home rows). For each row: its best other row
(similarity, id, key) and its ``k`` most similar rows at or above the threshold (edges). Per file,
the groups' answers are merged by row (max similarity, then smallest id; top k): an associative
merge, so a worker can merge its part before the shuffle. Every row that is an edge's neighbour
also has an edge of its own (it learnt from the same pair).

**Clusters.** The edges (only pairs at or above the threshold: O(duplicated images), never
O(images)) are joined into connected components on the launcher. Guard against chaining: each
component's *representative* is chosen by the keep rule (most pixels, then smallest key, then
smallest id); a member is dropped as its duplicate only if its own similarity to the
representative is at or above the threshold. A member only chained to it (A~B, B~C, C not ~ A) is
kept as a cluster of its own and counted (``chained`` in stats.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wit_builder.core import WitError

FLAT_CENTROIDS = 4096       # above this many cells, the nearest centroids come from an HNSW graph
ROW_BITS = 32


@dataclass(frozen=True)
class CellParams:
    threshold: float
    k: int = 16
    exact_below: int = 100_000
    cell_size: int = 2048          # target rows per cell
    probes: int = 3                # cells a row is searched in (home + probes - 1)
    margin: float = 0.1            # a further cell is probed when its centroid is this close to home's
    max_block: int = 8192          # rows per block of a split cell
    sample_per_cell: int = 40
    max_sample: int = 262_144
    seed: int = 0


# --- ids, hashes, reading -------------------------------------------------------------------------

def row_ids(file_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(file_index) << ROW_BITS) | rows.astype(np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ids >> ROW_BITS, ids & ((1 << ROW_BITS) - 1)


FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def key_hashes(keys) -> np.ndarray:
    """A 63-bit hash of each key, stable across processes and machines: FNV-1a over the key's
    UTF-8 bytes, then splitmix64's finaliser (vectorised: one numpy pass per byte position)."""
    import pyarrow as pa

    arr = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(keys, object), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    h = np.full(n, FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max()) if n else 0):
            live = lengths > j
            b = data[np.minimum(offsets[:-1] + j, len(data) - 1)].astype(np.uint64)
            h = np.where(live, (h ^ b) * FNV_PRIME, h)
        h ^= lengths.astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(1)).astype(np.int64)


@dataclass
class FileRows:
    """The embedded rows of one embeddings file (status ok only)."""
    ids: np.ndarray          # int64
    keys: np.ndarray         # object (str)
    pixels: np.ndarray       # int64
    vectors: np.ndarray      # float32, L2-normalised rows

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx) -> "FileRows":
        return FileRows(self.ids[idx], self.keys[idx], self.pixels[idx], self.vectors[idx])


def read_rows(path: str, file_index: int) -> FileRows:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["key", "width", "height", "status", "embedding"])
    ok_mask = pc.fill_null(pc.equal(t.column("status"), "ok"), False)
    rows = np.nonzero(ok_mask.to_numpy(zero_copy_only=False))[0]
    if len(rows) < t.num_rows:          # (filtering copies the embeddings: only when needed)
        t = t.filter(ok_mask)
    keys = t.column("key").to_numpy(zero_copy_only=False).astype(object)
    w = t.column("width").fill_null(-1).to_numpy().astype(np.int64)
    h = t.column("height").fill_null(-1).to_numpy().astype(np.int64)
    pixels = np.maximum(w, 0) * np.maximum(h, 0)
    emb = t.column("embedding").combine_chunks()
    if len(emb):
        dims = np.unique(pc.list_value_length(emb).to_numpy(zero_copy_only=False))
        if len(dims) != 1:
            raise WitError(f"embeddings file {path} mixes embedding sizes ({', '.join(map(str, dims[:5]))})")
        flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vec = flat.reshape(len(emb), int(dims[0]))
    else:
        vec = np.zeros((0, 1), np.float32)
    return FileRows(row_ids(file_index, rows), keys, pixels, normalise(vec))


def normalise(v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1)


def concat_rows(parts) -> FileRows:
    parts = [p for p in parts if len(p)]
    if not parts:
        return FileRows(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int64), np.zeros((0, 1), np.float32))
    return FileRows(np.concatenate([p.ids for p in parts]), np.concatenate([p.keys for p in parts]),
                    np.concatenate([p.pixels for p in parts]), np.concatenate([p.vectors for p in parts]))


# --- the sample and the quantizer -----------------------------------------------------------------

def cell_count(n: int, p: CellParams) -> int:
    return 1 if n < p.exact_below else max(1, math.ceil(n / p.cell_size))


def sample_size(n: int, p: CellParams) -> int:
    return int(min(n, p.max_sample, p.sample_per_cell * cell_count(n, p)))


HASH_SPACE = 2 ** 63        # key_hashes are uniform over [0, HASH_SPACE)


def sample_cutoff(n: int, size: int, slack: float = 4.0) -> int | None:
    """A key hash below which a row may be in the bottom-``size`` sample of ``n`` rows: each file
    sends only those, ~``slack`` x ``size`` rows in all (the hashes are uniform), instead of up to
    ``size`` rows a file (every row, where files hold fewer rows than the sample: the whole
    corpus went through the merge). None: every row is a candidate. The sample is exact when at
    least ``size`` rows fall below the cutoff (at slack 4 ~4 x size do, and fewer than ``size``
    is 1.5 sqrt(size) standard deviations away); when fewer do (repeated keys), sample again
    without it."""
    if n <= 0 or size <= 0 or slack * size >= n:
        return None
    return int(min(HASH_SPACE, math.ceil(slack * size / n * HASH_SPACE)))


def bottom(hashes: np.ndarray, ids: np.ndarray, vectors: np.ndarray, size: int):
    """The ``size`` rows with the smallest (hash, id): a uniform sample, the same whatever the order
    in which pieces are merged (merge with :func:`merge_bottom`)."""
    order = np.lexsort((ids, hashes))[:size]
    return hashes[order], ids[order], vectors[order]


def merge_bottom(pieces, size: int):
    pieces = [p for p in pieces if p is not None and len(p[0])]
    if not pieces:
        return None
    dims = sorted({p[2].shape[1] for p in pieces})
    if len(dims) > 1:
        raise WitError(f"the embedding files mix embedding sizes ({', '.join(map(str, dims))}): "
                       "were they made by different detectors?")
    h = np.concatenate([p[0] for p in pieces])
    i = np.concatenate([p[1] for p in pieces])
    v = np.concatenate([p[2] for p in pieces])
    return bottom(h, i, v, size)


@dataclass
class Quantizer:
    """Cell centroids and, per cell, how many blocks it is split into."""
    centroids: np.ndarray     # (cells, dim) float32, unit rows
    blocks: np.ndarray        # (cells,) int64 >= 1
    probes: int
    margin: float
    index: object = None      # built lazily (faiss objects do not pickle)

    @property
    def cells(self) -> int:
        return len(self.centroids)

    def nearest(self, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, cells) of the m nearest centroids of each row, best first."""
        import faiss

        m = min(m, self.cells)
        if self.index is None:
            d = self.centroids.shape[1]
            if self.cells <= FLAT_CENTROIDS:
                index = faiss.IndexFlatIP(d)
                index.add(self.centroids)
            else:          # built on one thread: the same graph on every worker
                index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = 80
                _single_thread(lambda: index.add(self.centroids))
                index.hnsw.efSearch = 128
            self.index = index
        sims, cells = self.index.search(np.ascontiguousarray(x, np.float32), m)
        return sims, cells

    def __getstate__(self):
        state = dict(self.__dict__)
        state["index"] = None
        return state


def _single_thread(fn):
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return fn()
    finally:
        faiss.omp_set_num_threads(before)


def train_quantizer(sample: np.ndarray, n: int, p: CellParams) -> Quantizer:
    """Spherical k-means (fixed seed, one thread) on the sample; blocks from the sample's cell sizes
    scaled to ``n`` rows."""
    import faiss

    cells = min(cell_count(n, p), max(1, len(sample)))
    d = sample.shape[1]
    if cells == 1:
        centroid = normalise(sample.mean(axis=0, keepdims=True)) if len(sample) else np.ones((1, d), np.float32)
        q = Quantizer(centroid, np.ones(1, np.int64), 1, p.margin)
    else:
        km = faiss.Kmeans(d, cells, niter=10, seed=p.seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        _single_thread(lambda: km.train(np.ascontiguousarray(sample, np.float32)))
        q = Quantizer(normalise(km.centroids), np.ones(cells, np.int64), p.probes, p.margin)
    if len(sample):
        home, probe_cells = assign(q, sample)
        per_cell = np.bincount(home, minlength=q.cells) + np.bincount(probe_cells, minlength=q.cells)
        estimate = per_cell * (n / len(sample))
        q.blocks = np.maximum(1, np.ceil(estimate / p.max_block)).astype(np.int64)
    return q


def assign(q: Quantizer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(home cell of each row, the extra cells some rows are probed in)."""
    home, _, cells = assign_full(q, x)
    return home, cells


def assign_full(q: Quantizer, x: np.ndarray):
    """(home (n,), probe_rows (m,), probe_cells (m,)): each row's nearest cell, and the further
    cells (among the ``probes`` nearest, within ``margin`` of home) where it is a query only."""
    if q.cells == 1 or len(x) == 0:
        return np.zeros(len(x), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    sims, cells = q.nearest(x, q.probes)
    home = cells[:, 0].astype(np.int64)
    extra = (cells[:, 1:] >= 0) & (sims[:, 1:] >= sims[:, :1] - q.margin)
    rows, col = np.nonzero(extra)
    return home, rows.astype(np.int64), cells[:, 1:][rows, col].astype(np.int64)


# --- groups ---------------------------------------------------------------------------------------

def group_pieces(q: Quantizer, rows: FileRows, hashes: np.ndarray):
    """Split one file's rows into the pieces each search group needs: yields
    ((cell, i, j), (FileRows, is_home bool array, block array))."""
    home, prow, pcell = assign_full(q, rows.vectors)
    if q.cells > 1:       # approximate mode: vectors travel as float16 (half the shuffle; cosine +-0.001)
        rows = FileRows(rows.ids, rows.keys, rows.pixels, rows.vectors.astype(np.float16))
    member_rows = np.concatenate([np.arange(len(rows)), prow])
    member_cell = np.concatenate([home, pcell])
    is_home = np.concatenate([np.ones(len(rows), bool), np.zeros(len(prow), bool)])
    nblocks = q.blocks[member_cell]
    block = hashes[member_rows] % nblocks
    # a member of block b of a cell split in s blocks goes to the groups (min(b, j), max(b, j)), j < s
    rep = nblocks
    idx = np.repeat(np.arange(len(member_rows)), rep)
    j = np.arange(len(idx)) - np.repeat(np.cumsum(rep) - rep, rep)
    b = block[idx]
    lo, hi = np.minimum(b, j), np.maximum(b, j)
    cell = member_cell[idx]
    order = np.lexsort((idx, hi, lo, cell))
    keys = np.stack([cell[order], lo[order], hi[order]], axis=1)
    if len(keys) == 0:
        return
    starts = np.nonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])[0]
    ends = np.r_[starts[1:], len(keys)]
    for s, e in zip(starts, ends):
        sel = idx[order[s:e]]
        r = member_rows[sel]
        yield (int(keys[s, 0]), int(keys[s, 1]), int(keys[s, 2])), (rows.take(r), is_home[sel], block[sel])


@dataclass
class Answers:
    """Per query row: the best other row and up to k edges (sorted rows by query id)."""
    qid: np.ndarray          # (m,) int64
    best_sim: np.ndarray     # (m,) float32 (-inf: none)
    best_id: np.ndarray      # (m,) int64 (-1: none)
    best_key: np.ndarray     # (m,) object
    edge_q: np.ndarray       # (e,) int64
    edge_id: np.ndarray      # (e,) int64
    edge_sim: np.ndarray     # (e,) float32
    edge_key: np.ndarray     # (e,) object: the neighbour's key
    edge_pixels: np.ndarray  # (e,) int64: the neighbour's pixels
    q_key: np.ndarray        # (m,) object
    q_pixels: np.ndarray     # (m,) int64


class _Best:
    """Running best neighbour (similarity desc, id asc) and top-k edges of the rows of one group."""

    def __init__(self, ids: np.ndarray, threshold: float, k: int):
        self.ids, self.threshold, self.k = ids, threshold, k
        self.sim = np.full(len(ids), -np.inf, np.float32)
        self.pos = np.full(len(ids), -1, np.int64)       # position (in ids) of the best neighbour
        self.edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending = 0

    def _offer(self, at: np.ndarray, sim: np.ndarray, pos: np.ndarray) -> None:
        better = (sim > self.sim[at]) | ((sim == self.sim[at]) & (pos < self.pos[at]) & np.isfinite(sim))
        self.sim[at[better]], self.pos[at[better]] = sim[better], pos[better]

    def block(self, qa: np.ndarray, sb: np.ndarray, sims: np.ndarray) -> None:
        """A block of similarities of rows ``qa`` to rows ``sb`` (positions; ``sb`` ascending)."""
        r = sims.argmax(axis=1)                               # first maximum: the smallest id
        row_best = sims[np.arange(len(qa)), r]
        self._offer(qa, row_best, sb[r])
        hit = np.nonzero(row_best >= self.threshold)[0]
        if len(hit):
            above = sims[hit] >= self.threshold
            many = above.sum(axis=1) > self.k                 # rows among copies: their k best only
            rr, cc = np.nonzero(above[~many])
            rr = hit[~many][rr]
            if many.any():
                rows_m = hit[many]
                part = np.argpartition(-sims[rows_m], self.k - 1, axis=1)[:, :self.k]
                rr = np.concatenate([rr, np.repeat(rows_m, self.k)])
                cc = np.concatenate([cc, part.reshape(-1)])
            self.edges.append((qa[rr], sb[cc], sims[rr, cc]))
            self.pending += len(rr)
            if self.pending > 4 * self.k * len(self.ids) + 1_000_000:   # a cell full of copies
                self._reduce()

    def _reduce(self) -> None:
        q, i, e = (np.concatenate(x) for x in zip(*self.edges))
        q, i, e = _top_k(q, i, e, self.k)
        self.edges, self.pending = [(q, i, e)], len(q)

    def result(self):
        if not self.edges:
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0, np.float32)
        self._reduce()
        return self.edges[0]


def search_group(pieces, threshold: float, k: int, same_block: bool, slice_rows: int = 256,
                 threads: int = 1) -> Answers:
    """Exact search inside one group (see the module text). ``same_block``: the group is (i, i), so
    pairs inside the block are searched; otherwise only pairs across its two blocks. Each pair of
    rows is computed once and both learn from it: pairs of two home rows, and of a probe row and a
    home row (two probe rows are not compared here). ``threads``: slices multiplied at once, each
    product on the calling thread's BLAS (run it with one BLAS thread: each slice is then the same
    bits whatever ``threads`` is, and what rows learn does not depend on the order slices finish)."""
    rows = concat_rows([p[0] for p in pieces])
    is_home = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, bool)
    block = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, np.int64)
    # each row once (a retried bundle may deliver a piece twice); home rows first, then probes,
    # each part by ascending id (a block's first maximum is then the smallest id)
    _, first = np.unique(rows.ids, return_index=True)
    first = first[np.lexsort((rows.ids[first], ~is_home[first]))]
    rows, is_home, block = rows.take(first), is_home[first], block[first]
    m = len(rows)
    best = _Best(rows.ids, threshold, k)
    vec = rows.vectors.astype(np.float32, copy=False)

    def take(pos: np.ndarray) -> np.ndarray:             # a view when the positions are a range
        if len(pos) and pos[-1] - pos[0] + 1 == len(pos):
            return vec[pos[0]:pos[-1] + 1]
        return vec[pos]

    # a task: rows q against rows cols, where cols starts with q itself (``own`` rows: the pairs
    # among q, its diagonal masked) or not (own = 0); q learns from cols, cols[own:] from q
    tasks: list[tuple[np.ndarray, np.ndarray, int]] = []

    def both_ways(qa: np.ndarray, sb: np.ndarray) -> None:
        """Rows ``qa`` and rows ``sb`` (disjoint, each ascending) learn from each other."""
        if len(qa) and len(sb):
            tasks.extend((qa[s:s + slice_rows], sb, 0) for s in range(0, len(qa), slice_rows))

    def among(h: np.ndarray) -> None:
        """Rows ``h`` (ascending) learn from each other: each pair computed once (a slice of rows
        against itself and the rows after it)."""
        tasks.extend((h[s:s + slice_rows], h[s:], len(h[s:s + slice_rows])) for s in range(0, len(h), slice_rows))

    def product(task) -> np.ndarray:
        q, cols, own = task
        sims = take(q) @ take(cols).T
        if own:
            sims[np.arange(own), np.arange(own)] = -np.inf          # not from itself
        return sims

    home, probe = np.nonzero(is_home)[0], np.nonzero(~is_home)[0]
    if same_block:
        among(home)
        both_ways(probe, home)
    elif m:
        lo = block == block.min()
        both_ways(home[lo[home]], home[~lo[home]])
        both_ways(probe[lo[probe]], home[~lo[home]])
        both_ways(probe[~lo[probe]], home[lo[home]])
    for (q, cols, own), sims in zip(tasks, _in_order(product, tasks, threads)):
        best.block(q, cols, sims)
        if len(cols) > own:
            best.block(cols[own:], q, np.ascontiguousarray(sims[:, own:].T))
    eq, ei, es = best.result()
    best_id = np.where(best.pos >= 0, rows.ids[np.maximum(best.pos, 0)], -1)
    best_key = np.where(best.pos >= 0, rows.keys[np.maximum(best.pos, 0)], None) if m else np.zeros(0, object)
    order = np.argsort(rows.ids, kind="stable")            # answers by ascending query id
    return Answers(rows.ids[order], best.sim[order], best_id[order], best_key.astype(object)[order],
                   rows.ids[eq], rows.ids[ei], es, rows.keys[ei], rows.pixels[ei], rows.keys[order],
                   rows.pixels[order])


def _in_order(fn, items, threads: int):
    """``map(fn, items)`` with up to ``threads`` calls running at once on a thread pool (numpy's
    products release the GIL), results in the items' order, at most ``threads`` + 1 held."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _top_k(q: np.ndarray, i: np.ndarray, sim: np.ndarray, k: int, *extra):
    """Per query id, the k edges of highest similarity (ties: smallest id), distinct neighbours."""
    order = np.lexsort((i, -sim.astype(np.float64), q))
    q, i, sim = q[order], i[order], sim[order]
    extra = [e[order] for e in extra]
    if len(q):
        new = np.r_[True, (q[1:] != q[:-1]) | (i[1:] != i[:-1])]
        q, i, sim = q[new], i[new], sim[new]
        extra = [e[new] for e in extra]
        start = np.r_[0, np.nonzero(q[1:] != q[:-1])[0] + 1]
        rank = np.arange(len(q)) - np.repeat(start, np.diff(np.r_[start, len(q)]))
        keep = rank < k
        q, i, sim = q[keep], i[keep], sim[keep]
        extra = [e[keep] for e in extra]
    return (q, i, sim, *extra)


def merge_answers(parts: list[Answers], k: int) -> Answers:
    """Merge the groups' answers for the same query rows: best = max similarity (ties: smallest
    id); edges = the k best distinct neighbours (similarity desc, id asc)."""
    parts = [p for p in parts if len(p.qid)]
    if not parts:
        z = np.zeros(0, np.int64)
        return Answers(z, z.astype(np.float32), z, z.astype(object), z, z, z.astype(np.float32),
                       z.astype(object), z, z.astype(object), z)
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    qid, bs, bi, bk, qk, qp = (cat(n) for n in ("qid", "best_sim", "best_id", "best_key", "q_key", "q_pixels"))
    order = np.lexsort((np.where(bi < 0, np.iinfo(np.int64).max, bi), -bs.astype(np.float64), qid))
    first = np.r_[True, qid[order][1:] != qid[order][:-1]]
    pick = order[first]
    eq, ei, es, ek, ep = _top_k(cat("edge_q"), cat("edge_id"), cat("edge_sim"), k, cat("edge_key"), cat("edge_pixels"))
    return Answers(qid[pick], bs[pick], bi[pick], bk[pick], eq, ei, es, ek, ep, qk[pick], qp[pick])


# --- clusters -------------------------------------------------------------------------------------

@dataclass
class Clusters:
    """Decisions for the rows that have at least one edge (all other rows are their own cluster)."""
    ids: np.ndarray           # sorted int64
    cluster: np.ndarray       # cluster id (the representative's row id)
    size: np.ndarray          # rows in the cluster (representative + dropped duplicates)
    kept: np.ndarray          # bool
    component: np.ndarray     # connected component (its representative's id), for stats
    rep_sim: np.ndarray       # similarity to the representative when known from an edge, else NaN
    chained: int = 0          # members kept because they are not similar to their representative


def components(ids_a: np.ndarray, ids_b: np.ndarray):
    """Connected components of the edge list: (node ids sorted, component label per node)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([ids_a, ids_b]))
    a, b = np.searchsorted(nodes, ids_a), np.searchsorted(nodes, ids_b)
    g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(g, directed=True, connection="weak")
    return nodes, labels


def representatives(nodes, labels, keys, pixels) -> np.ndarray:
    """Per node, the id of its component's representative: most pixels, smallest key, smallest id."""
    order = np.lexsort((nodes, keys.astype(str), -pixels, labels))
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    rep_of_label = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    rep_of_label[labels[order][first]] = nodes[order][first]
    return rep_of_label[labels]


def node_info(edge_q, q_key, q_pix, edge_id, e_key, e_pix):
    """(nodes sorted, key, pixels) from both ends of the edges."""
    ids = np.concatenate([edge_q, edge_id])
    keys = np.concatenate([q_key, e_key])
    pix = np.concatenate([q_pix, e_pix])
    nodes, first = np.unique(ids, return_index=True)
    return nodes, keys[first], pix[first]


def direct_rep_sim(nodes, rep, edge_q, edge_id, edge_sim) -> np.ndarray:
    """Similarity of each node to its representative where an edge gives it (NaN elsewhere; 1 for
    the representative itself)."""
    out = np.full(len(nodes), np.nan, np.float32)
    out[nodes == rep] = 1.0
    for a, b in ((edge_q, edge_id), (edge_id, edge_q)):
        ia = np.searchsorted(nodes, a)
        hit = rep[ia] == b
        out[ia[hit]] = np.fmax(out[ia[hit]], edge_sim[hit])
    return out


def answers_by_file(a: Answers):
    """Yield (file index, the part of ``a`` whose query rows belong to it), one sort for all files
    (not one pass over the rows per file)."""
    fq, fe = split_ids(a.qid)[0], split_ids(a.edge_q)[0]
    oq, oe = np.argsort(fq, kind="stable"), np.argsort(fe, kind="stable")
    fq, fe = fq[oq], fe[oe]
    for f in np.unique(fq):
        i = oq[np.searchsorted(fq, f):np.searchsorted(fq, f, side="right")]
        e = oe[np.searchsorted(fe, f):np.searchsorted(fe, f, side="right")]
        yield int(f), Answers(a.qid[i], a.best_sim[i], a.best_id[i], a.best_key[i], a.edge_q[e], a.edge_id[e],
                              a.edge_sim[e], a.edge_key[e], a.edge_pixels[e], a.q_key[i], a.q_pixels[i])


def concat_pieces(pieces) -> tuple:
    """Pieces of one search group (``group_pieces``' values) as one piece."""
    pieces = list(pieces)
    if len(pieces) == 1:
        return pieces[0]
    return (concat_rows([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]))


def edges_table(a: Answers):
    import pyarrow as pa

    q = np.searchsorted(a.qid, a.edge_q)
    return pa.table({"q": a.edge_q, "id": a.edge_id, "sim": a.edge_sim,
                     "q_key": pa.array(a.q_key[q].tolist(), pa.string()),
                     "q_pixels": a.q_pixels[q], "key": pa.array(a.edge_key.tolist(), pa.string()),
                     "pixels": a.edge_pixels})


def best_table(a: Answers):
    import pyarrow as pa

    return pa.table({"q": a.qid, "best_sim": a.best_sim, "best_id": a.best_id,
                     "best_key": pa.array(a.best_key.tolist(), pa.string())})


def link_clusters(edges, threshold: float) -> tuple[Clusters, np.ndarray, np.ndarray]:
    """Components and representatives from the edge table (columns of :func:`edges_table`).
    Returns (clusters with ``rep_sim`` NaN where unknown, the ids whose similarity to their
    representative must be computed, their representatives)."""
    cols = {c: edges.column(c).to_numpy(zero_copy_only=False) for c in edges.column_names}
    if len(cols["q"]) == 0:
        z = np.zeros(0, np.int64)
        return Clusters(z, z, z, np.zeros(0, bool), z, np.zeros(0, np.float32)), z, z
    nodes, keys, pixels = node_info(cols["q"], cols["q_key"].astype(object), cols["q_pixels"],
                                    cols["id"], cols["key"].astype(object), cols["pixels"])
    _, labels = components(cols["q"], cols["id"])
    # components() numbers the same sorted node list
    rep = representatives(nodes, labels, keys, pixels)
    rep_sim = direct_rep_sim(nodes, rep, cols["q"], cols["id"], cols["sim"])
    unknown = np.isnan(rep_sim)
    clusters = Clusters(nodes, rep.copy(), np.zeros(len(nodes), np.int64), np.zeros(len(nodes), bool), rep, rep_sim)
    return clusters, nodes[unknown], rep[unknown]


def finish_clusters(c: Clusters, threshold: float, checked_ids=None, checked_sims=None) -> Clusters:
    """Apply the chain guard: a member is its representative's duplicate only if similar to it."""
    sim = c.rep_sim.copy()
    if checked_ids is not None and len(checked_ids):
        sim[np.searchsorted(c.ids, checked_ids)] = checked_sims
    is_rep = c.ids == c.component
    dup = ~is_rep & (sim >= threshold)
    chained = ~is_rep & ~dup
    cluster = np.where(chained, c.ids, c.component)
    # cluster sizes: representative + its duplicates; a chained member is a cluster of one
    ucl, inv = np.unique(cluster, return_inverse=True)
    size = np.bincount(inv)[inv]
    kept = ~dup
    return Clusters(c.ids, cluster, size.astype(np.int64), kept, c.component, sim, int(chained.sum()))


def lookup(c: Clusters, ids: np.ndarray):
    """(found mask, position in c) for row ids."""
    if len(c.ids) == 0:
        return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
    pos = np.minimum(np.searchsorted(c.ids, ids), len(c.ids) - 1)
    return c.ids[pos] == ids, pos


def file_decisions(path: str, file_index: int, best, c: Clusters):
    """DECISIONS_SCHEMA rows of one embeddings file (its truncated-shard marker row left out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.schemas import DECISIONS_SCHEMA

    t = pq.read_table(path, columns=["key", "uid", "shard", "width", "height", "status"])
    n = t.num_rows
    status = np.array(t.column("status").to_pylist(), object)
    ok = status == "ok"
    ids = row_ids(file_index, np.arange(n))
    cluster = np.where(ok, ids, -1)
    size = ok.astype(np.int64)
    kept = ok.copy()
    found, pos = lookup(c, ids)
    cluster[found], size[found], kept[found] = c.cluster[pos[found]], c.size[pos[found]], c.kept[pos[found]]
    nearest_sim = np.full(n, np.nan, np.float32)
    nearest_key = np.full(n, None, object)
    if best is not None and best.num_rows:
        rows = split_ids(best.column("q").to_numpy())[1]
        bs = best.column("best_sim").to_numpy().astype(np.float32)
        has = np.isfinite(bs)
        nearest_sim[rows[has]] = bs[has]
        nearest_key[rows[has]] = np.array(best.column("best_key").to_pylist(), object)[has]
    table = pa.table({
        "uid": t.column("uid"), "key": t.column("key"),
        "cluster_id": pa.array(cluster, pa.int64()), "cluster_size": pa.array(size, pa.int32()),
        "kept": pa.array(kept, pa.bool_()), "nearest_similarity": pa.array(nearest_sim, pa.float32()),
        "nearest_key": pa.array(nearest_key.tolist(), pa.string()), "shard": t.column("shard"),
        "width": t.column("width").cast(pa.int32()), "height": t.column("height").cast(pa.int32()),
        "status": t.column("status"),
    }).cast(DECISIONS_SCHEMA)
    return table.filter(pa.array(status != "truncated_shard"))
