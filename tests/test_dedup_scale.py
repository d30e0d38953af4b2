"""``wit dedup run``'s neighbour search and clustering on Beam (wit_builder/dedup_cells.py,
pipelines/dedup_cells.py): equal to the exact single-process search on small inputs, the same
for any worker count and input order, big cells split, chains guarded."""
import collections
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.beam_options import BeamOptions
from pipelines.dedup_cells import cluster_files
from wit_builder import dedup_cells as dc
from wit_builder.dedup import cluster_vectors
from wit_builder.sim.embedsets import planted_embeddings, write_embedding_files

THR = 0.9


def _run(tmp, name, vectors, params, workers=1, rows_per_file=1000, pixels=None, reverse=False):
    files = write_embedding_files(str(tmp / name / "emb"), vectors, rows_per_file, pixels=pixels)
    out = str(tmp / name)
    stats = cluster_files(files[::-1] if reverse else files, out, params, BeamOptions(workers=workers))
    t = pq.read_table(os.path.join(out, "decisions.parquet"))
    assert not os.path.exists(os.path.join(out, ".wit-work-cells"))  # the work folder is removed
    return t, stats


def _by_row(t, n):
    """Arrays indexed by the original row (keys are zero-padded row numbers)."""
    rows = np.array([int(k) for k in t.column("key").to_pylist()])
    assert sorted(rows.tolist()) == list(range(n))  # every image once
    out = {}
    for c in ("cluster_id", "cluster_size", "kept", "nearest_similarity", "nearest_key"):
        col = np.array(t.column(c).to_pylist(), dtype=object if c == "nearest_key" else None)
        a = np.empty(n, dtype=col.dtype)
        a[rows] = col
        out[c] = a
    return out


def _same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_equals_exact_search_below_exact_below(tmp_path):
    v, _ = planted_embeddings(3000, 64, dup_share=0.15, seed=3, copy_noise=0.1)  # no chains
    t, stats = _run(tmp_path, "cells", v, dc.CellParams(threshold=THR, exact_below=10_000))
    exact = cluster_vectors(v, THR, k=16, exact_below=10**9)
    got = _by_row(t, len(v))
    assert stats["cells"] == 1 and stats["chained"] == 0 and stats["dropped_duplicates"] > 300
    assert _same_partition(got["cluster_id"], exact["labels"])
    assert (got["kept"] == exact["kept"]).all()
    assert (got["cluster_size"] == exact["sizes"]).all()
    np.testing.assert_allclose(got["nearest_similarity"], exact["nearest_similarity"], atol=1e-5)
    assert (got["nearest_key"] == np.array([f"{i:012d}" for i in exact["nearest"]], object)).mean() > 0.999


@pytest.mark.parametrize("flat_centroids", [1024, 4])   # 4: nearest cells looked up in an HNSW graph
def test_many_cells_find_the_planted_duplicates(tmp_path, monkeypatch, flat_centroids):
    monkeypatch.setattr(dc, "FLAT_CENTROIDS", flat_centroids)
    v, group = planted_embeddings(12_000, 64, dup_share=0.1, seed=4)
    t, stats = _run(tmp_path, "cells", v, dc.CellParams(threshold=THR, exact_below=1000, cell_size=600))
    exact = cluster_vectors(v, THR, k=16, exact_below=10**9)
    got = _by_row(t, len(v))
    assert stats["cells"] == 20
    # recall of the exact search's duplicate links: the same images dropped
    dropped_exact, dropped = ~exact["kept"], ~got["kept"]
    assert (dropped & dropped_exact).sum() >= 0.99 * dropped_exact.sum()
    assert (dropped & ~dropped_exact).sum() == 0


def test_same_decisions_for_any_worker_count_and_input_order(tmp_path):
    v, _ = planted_embeddings(4000, 32, dup_share=0.2, seed=5)
    params = dc.CellParams(threshold=THR, exact_below=500, cell_size=500, max_block=400)
    t1, s1 = _run(tmp_path, "one", v, params, workers=1)
    t2, s2 = _run(tmp_path, "two", v, params, workers=2, reverse=True)
    assert s1["split_cells"] > 0
    cols = ["key", "cluster_id", "cluster_size", "kept", "nearest_key"]
    assert t1.select(cols).to_pylist() == t2.select(cols).to_pylist()
    np.testing.assert_array_equal(t1.column("nearest_similarity").to_numpy(), t2.column("nearest_similarity").to_numpy())


def test_a_cell_bigger_than_the_limit_is_split_with_the_same_result(tmp_path):
    v, _ = planted_embeddings(3000, 32, dup_share=0.2, seed=6)
    whole, s_whole = _run(tmp_path, "whole", v, dc.CellParams(threshold=THR, exact_below=10**6))
    split, s_split = _run(tmp_path, "split", v, dc.CellParams(threshold=THR, exact_below=10**6, max_block=250))
    assert s_whole["split_cells"] == 0 and s_split["split_cells"] == 1
    cols = ["key", "cluster_id", "cluster_size", "kept", "nearest_key"]
    assert whole.select(cols).to_pylist() == split.select(cols).to_pylist()


def test_no_search_group_holds_more_than_two_blocks():
    v, _ = planted_embeddings(6000, 32, seed=7)
    p = dc.CellParams(threshold=THR, exact_below=100, cell_size=3000, max_block=500)
    keys = np.array([f"{i:012d}" for i in range(len(v))], object)
    h = dc.key_hashes(keys)
    q = dc.train_quantizer(dc.bottom(h, np.arange(len(v)), v, 2000)[2], len(v), p)
    assert q.blocks.max() > 1
    sizes = collections.Counter()
    for f, s in enumerate(range(0, len(v), 1000)):
        rows = dc.FileRows(dc.row_ids(f, np.arange(1000)), keys[s:s + 1000], np.full(1000, 1), v[s:s + 1000])
        for group, piece in dc.group_pieces(q, rows, h[s:s + 1000]):
            sizes[group] += len(piece[0])
    # each block is estimated at <= max_block rows: a group holds two blocks (and sampling noise)
    assert max(sizes.values()) <= 2 * 1.5 * p.max_block


def _arc(n, step_cos, dim=8):
    """Unit vectors along a great circle, consecutive ones at cosine step_cos."""
    theta = np.arccos(step_cos) * np.arange(n)
    v = np.zeros((n, dim), np.float32)
    v[:, 0], v[:, 1] = np.cos(theta), np.sin(theta)
    return v


def test_a_chain_of_near_duplicates_is_not_collapsed(tmp_path):
    # A ~ B ~ C ~ D (cos 0.95 between neighbours), A and C at cos 0.805: only B is A's duplicate
    v = _arc(4, 0.95)
    pixels = np.array([400 * 400, 100, 100, 100])          # A is the kept image
    t, stats = _run(tmp_path, "chain", v, dc.CellParams(threshold=THR), pixels=pixels)
    got = _by_row(t, 4)
    assert got["kept"].tolist() == [True, False, True, True]
    assert got["cluster_size"].tolist() == [2, 2, 1, 1]
    assert got["cluster_id"][0] == got["cluster_id"][1] != got["cluster_id"][2]
    assert stats["chained"] == 2 and stats["components"] == 1 and stats["largest_component"] == 4
    # the exact single-process search (transitive) would have dropped three of the four
    assert cluster_vectors(v, THR)["kept"].sum() == 1


@pytest.mark.parametrize("launcher_rows", [500_000, 0])    # 0: always the CheckRepresentatives pipeline
def test_members_without_a_link_to_the_kept_image_are_checked_against_it(tmp_path, monkeypatch, launcher_rows):
    # 30 copies of one image, k = 4 links each: most have no direct link to the kept one, yet all
    # are similar to it, so all but one are dropped
    import pipelines.dedup_cells as pdc
    monkeypatch.setattr(pdc, "LAUNCHER_CHECK_ROWS", launcher_rows)
    files_read, pipelines_run = [], []          # per pipeline: the files it read
    real_read = dc.read_rows
    monkeypatch.setattr(dc, "read_rows", lambda path, index: (files_read.append(index), real_read(path, index))[1])
    real_run = pdc.run_pipeline

    def run(build, opts):
        before = len(files_read)
        real_run(build, opts)
        pipelines_run.append(sorted(files_read[before:]))
    monkeypatch.setattr(pdc, "run_pipeline", run)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    v = (base + 0.01 * rng.standard_normal((30, 16))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = np.concatenate([v, planted_embeddings(70, 16, dup_share=0.0, seed=9)[0]])   # 4 files of 25
    t, stats = _run(tmp_path, "copies", v, dc.CellParams(threshold=THR, k=4), rows_per_file=25)
    got = _by_row(t, 100)
    assert got["kept"][:30].sum() == 1 and (got["cluster_size"][:30] == 30).all()
    assert stats["checked_against_representative"] > 0 and stats["chained"] == 0
    # sample, search, (check), decisions: the launcher reads the two files holding the members;
    # the check pipeline reads only those two as well (before, every file)
    assert len(pipelines_run) == (3 if launcher_rows else 4)
    if not launcher_rows:
        assert pipelines_run[2] == [0, 1]


def test_no_embedded_rows(tmp_path):
    t, stats = _run(tmp_path, "empty", np.zeros((0, 8), np.float32), dc.CellParams(threshold=THR))
    assert t.num_rows == 0 and stats["dropped_duplicates"] == 0


def test_a_cell_full_of_copies_keeps_its_edge_lists_bounded():
    # 4,000 copies of one image in one cell: 16M pairs at the threshold, k = 4 kept per image
    import tracemalloc
    n = 4000
    v = np.tile(dc.normalise(np.ones((1, 16), np.float32)), (n, 1))
    rows = dc.FileRows(dc.row_ids(0, np.arange(n)), np.array([f"{i:012d}" for i in range(n)], object),
                       np.ones(n, np.int64), v)
    tracemalloc.start()
    a = dc.search_group([(rows, np.ones(n, bool), np.zeros(n, np.int64))], THR, 4, same_block=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.bincount(dc.split_ids(a.edge_q)[1]).max() == 4 and len(a.edge_q) == 4 * n
    assert peak < 200 * 2**20          # all 16M pairs at once: > 300 MiB


def test_embedding_files_of_two_sizes_are_one_line_error(tmp_path):
    from wit_builder.core import WitError
    a = write_embedding_files(str(tmp_path / "a"), planted_embeddings(50, 16, seed=1)[0], 50)
    b = write_embedding_files(str(tmp_path / "b"), planted_embeddings(50, 8, seed=2)[0], 50)
    with pytest.raises(WitError, match="mix embedding sizes"):
        cluster_files([a[0], b[0]], str(tmp_path / "out"), dc.CellParams(threshold=THR))


def _fnv_splitmix_reference(key: str) -> int:
    """The documented key hash written out byte by byte (FNV-1a 64, length, splitmix64 finaliser)."""
    m = (1 << 64) - 1
    h = 0xCBF29CE484222325
    data = key.encode()
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & m
    h ^= len(data)
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & m
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & m
    h ^= h >> 31
    return h >> 1


def test_key_hashes_are_the_documented_hash_for_any_key():
    keys = ["", "a", "000000012345", "é-ü/ß", "x" * 70, "short"]
    got = dc.key_hashes(np.array(keys, object))
    assert got.dtype == np.int64 and (got >= 0).all()
    assert got.tolist() == [_fnv_splitmix_reference(k) for k in keys]
    # the same from an Arrow column, a sliced one included (offsets not starting at 0)
    import pyarrow as pa
    assert dc.key_hashes(pa.array(keys)[2:]).tolist() == got[2:].tolist()
    assert len(dc.key_hashes(np.array([], object))) == 0


def _brute_force(v, ids, is_home, threshold, k):
    """Per row: the best other row it is compared with, and its k best rows at or above the
    threshold, where every pair with at least one home row is compared (both ways)."""
    sims = v.astype(np.float32) @ v.astype(np.float32).T
    np.fill_diagonal(sims, -np.inf)
    sims[np.ix_(~is_home, ~is_home)] = -np.inf
    best = sims.max(axis=1)
    edges = set()
    for r in range(len(v)):
        above = np.nonzero(sims[r] >= threshold)[0]
        top = sorted(above, key=lambda c: (-sims[r, c], ids[c]))[:k]
        edges |= {(int(ids[r]), int(ids[c])) for c in top}
    return best, edges


@pytest.mark.parametrize("n_home", [700, 40])
def test_search_group_compares_each_pair_once_and_both_rows_learn(n_home):
    v, _ = planted_embeddings(900, 16, dup_share=0.3, seed=11)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**6, len(v), replace=False)).astype(np.int64)
    is_home = np.zeros(len(v), bool)
    is_home[rng.choice(len(v), n_home, replace=False)] = True
    rows = dc.FileRows(ids, np.array([f"k{i}" for i in ids], object), np.ones(len(v), np.int64), v)
    # delivered in two pieces, out of order
    half = rng.permutation(len(v))
    pieces = [(rows.take(p), is_home[p], np.zeros(len(p), np.int64)) for p in (half[:400], half[400:])]
    a = dc.search_group(pieces, 0.8, 3, same_block=True, slice_rows=128)
    best, edges = _brute_force(v, ids, is_home, 0.8, 3)
    assert a.qid.tolist() == ids.tolist()
    np.testing.assert_allclose(a.best_sim, best, atol=1e-5)
    assert set(zip(a.edge_q.tolist(), a.edge_id.tolist())) == edges
    # a home row learns from a probe row too (the probe is its best neighbour for some rows)
    home_best_from_probe = [(ids[r], a.best_id[r]) for r in np.nonzero(is_home)[0]
                            if a.best_id[r] in set(ids[~is_home].tolist())]
    assert home_best_from_probe


def test_answers_split_by_file_and_merged_in_any_grouping():
    v, _ = planted_embeddings(600, 16, dup_share=0.3, seed=12)
    files = np.repeat(np.arange(3), 200)
    ids = dc.row_ids(0, np.arange(600)) | (files.astype(np.int64) << dc.ROW_BITS)
    rows = dc.FileRows(ids, np.array([f"k{i}" for i in range(600)], object), np.ones(600, np.int64), v)
    parts = [dc.search_group([(rows.take(s), np.ones(len(s), bool), np.zeros(len(s), np.int64))], 0.8, 4, True)
             for s in (np.arange(0, 600, 2), np.arange(1, 600, 2), np.arange(600))]
    whole = dc.merge_answers(parts, 4)
    by_file = {}
    for p in parts:
        for f, a in dc.answers_by_file(p):
            assert (dc.split_ids(a.qid)[0] == f).all() and (dc.split_ids(a.edge_q)[0] == f).all()
            by_file.setdefault(f, []).append(a)
    assert sorted(by_file) == [0, 1, 2]
    # per file, merged in two steps (as a combiner before and after the shuffle) = merged at once
    for f, answers in by_file.items():
        two_step = dc.merge_answers([dc.merge_answers(answers[:2], 4), answers[2]], 4)
        at_once = [a for g, a in dc.answers_by_file(whole) if g == f][0]
        for name in ("qid", "best_sim", "best_id", "edge_q", "edge_id", "edge_sim"):
            np.testing.assert_array_equal(getattr(two_step, name), getattr(at_once, name))


def test_the_search_runs_on_one_blas_and_openmp_thread_and_restores_them():
    import faiss  # noqa: F401  (loads its OpenMP before the "before" picture)
    from threadpoolctl import threadpool_info

    from pipelines.dedup_cells import _one_thread
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    with _one_thread():
        # the search's libraries: numpy's BLAS, faiss's OpenMP and BLAS (others a test process may
        # have loaded later, e.g. scipy's or torch's, are not used by the search)
        inside = [i for i in threadpool_info() if "numpy" in i["filepath"] or "faiss" in i["filepath"]]
    assert {i["internal_api"] for i in inside} >= {"openblas", "openmp"}
    assert all(i["num_threads"] == 1 for i in inside)
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before


def test_search_group_on_several_threads_is_the_same_bits():
    from pipelines.dedup_cells import _one_thread
    v, _ = planted_embeddings(3000, 64, dup_share=0.2, seed=13)
    ids = np.arange(3000, dtype=np.int64)
    rows = dc.FileRows(ids, np.array([f"k{i}" for i in ids], object), np.ones(3000, np.int64), v.astype(np.float16))
    is_home = np.arange(3000) % 7 != 0
    piece = (rows, is_home, np.zeros(3000, np.int64))
    with _one_thread():
        one = dc.search_group([piece], 0.8, 4, same_block=True, threads=1)
        three = dc.search_group([piece], 0.8, 4, same_block=True, threads=3)
    for name in ("qid", "best_sim", "best_id", "edge_q", "edge_id", "edge_sim"):
        np.testing.assert_array_equal(getattr(one, name), getattr(three, name))
    assert len(one.edge_q) > 500


def test_one_local_worker_multiplies_on_every_core(monkeypatch):
    from pipelines.dedup_cells import search_threads
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert search_threads(BeamOptions(workers=1)) == 8
    assert search_threads(BeamOptions(workers=4)) == 2
    assert search_threads(BeamOptions(workers=16)) == 1
    assert search_threads(BeamOptions(runner="DataflowRunner", workers=1)) == 1


def test_a_worker_sends_its_joined_values_on_once_they_pass_the_budget():
    from pipelines.dedup_cells import _JoinInBundle, _nbytes
    piece = np.ones(100, np.int64)                       # 800 bytes
    assert _nbytes((piece, np.array(["a", "b"], object))) == 800 + 2 * 8 + 2 * 64
    fn = _JoinInBundle(np.concatenate, budget=2000)
    fn.start_bundle()
    sent = [list(fn.process((key, piece * key))) for key in (1, 2, 1)]
    assert sent[:2] == [[], []] and fn.held == 0          # the third value passed 2,000 bytes
    got = dict(sent[2])
    assert sorted(got) == [1, 2] and len(got[1]) == 200 and (got[2] == 2).all()
    assert not list(fn.process((3, piece))) and fn.held == 800
    rest = [w.value for w in fn.finish_bundle()]
    assert len(rest) == 1 and rest[0][0] == 3 and (rest[0][1] == 1).all()


@pytest.mark.parametrize("budget", [1, 10**9])   # every value sent alone, or all joined first
def test_join_per_key_joins_every_value_whatever_the_budget(budget):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.dedup_cells import JoinPerKey
    pairs = [(k % 3, np.array([k])) for k in range(20)]
    with TestPipeline(runner="DirectRunner") as p:
        joined = (p | beam.Create(pairs) | JoinPerKey(np.concatenate, budget)
                  | beam.MapTuple(lambda k, v: (k, sorted(v.tolist()))))
        assert_that(joined, equal_to([(r, list(range(r, 20, 3))) for r in range(3)]))


def test_same_decisions_whatever_a_worker_joins_before_the_shuffle(tmp_path, monkeypatch):
    import pipelines.dedup_cells as pdc
    v, _ = planted_embeddings(4000, 32, dup_share=0.2, seed=5)
    params = dc.CellParams(threshold=THR, exact_below=500, cell_size=500, max_block=400)
    t1, _ = _run(tmp_path, "joined", v, params, workers=2)
    monkeypatch.setattr(pdc, "JOIN_BUDGET", 1)           # every piece and answer sent on alone
    t2, _ = _run(tmp_path, "alone", v, params, workers=2)
    cols = ["key", "cluster_id", "cluster_size", "kept", "nearest_key", "nearest_similarity"]
    assert t1.select(cols).to_pylist() == t2.select(cols).to_pylist()


def test_a_thread_leaving_the_search_scope_leaves_blas_on_one_thread_for_a_thread_still_inside():
    # a worker process may run bundles on several threads (the DirectRunner's multi_threading mode,
    # Dataflow's harness threads); OpenBLAS's thread count is one setting for the process: the
    # first thread out must not give BLAS its threads back while another is inside (before, it did;
    # and threadpoolctl ignored the limit from any thread but the first one that set it)
    import threading

    import faiss  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipelines.dedup_cells import _one_thread

    def numpy_blas_threads():
        return [i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with _one_thread():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def b():
        a_inside.wait(10)
        with _one_thread():
            b_inside.set()
            a_left.wait(10)
            seen["b after a left"] = numpy_blas_threads()
        seen["after both"] = numpy_blas_threads()

    with threadpool_limits(limits=2, user_api="blas"):
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen["b after a left"] and set(seen["b after a left"]) == {1}
        assert set(seen["after both"]) == {2}


def _sample_with(files, size, cutoff, out):
    import pickle

    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from pipelines.beam_options import make_options
    from pipelines.dedup_cells import SampleRows

    def save(acc):
        with open(out, "wb") as fh:
            pickle.dump(acc, fh)
    p = beam.Pipeline(options=make_options(BeamOptions()))
    _ = p | beam.Create(list(enumerate(files))) | SampleRows(size, cutoff) | beam.Map(save)
    result = p.run()
    result.wait_until_finish()
    sent = result.metrics().query(MetricsFilter().with_name("sample_rows_sent"))["counters"]
    with open(out, "rb") as fh:
        return pickle.load(fh), sum(c.committed for c in sent)


def test_the_sample_travels_as_a_few_times_its_size_and_is_the_same_rows(tmp_path):
    # 30 files of 1,000 rows, a sample of 4,720 (118 cells x 40): each file used to send all its
    # rows (30,000 in all); below the cutoff ~4 x 4,720 travel, and the bottom rows are the same
    v, _ = planted_embeddings(30_000, 8, dup_share=0.0, seed=5)
    files = write_embedding_files(str(tmp_path / "emb"), v, 1000)
    p = dc.CellParams(threshold=THR, exact_below=1000, cell_size=256)
    size = dc.sample_size(30_000, p)
    cutoff = dc.sample_cutoff(30_000, size)
    assert size == 4720 and cutoff is not None
    (n_all, (h_all, i_all, _)), sent_all = _sample_with(files, size, None, str(tmp_path / "all.pkl"))
    (n_cut, (h_cut, i_cut, _)), sent_cut = _sample_with(files, size, cutoff, str(tmp_path / "cut.pkl"))
    assert n_all == n_cut == 30_000 and len(i_cut) == size
    np.testing.assert_array_equal(i_all, i_cut)
    np.testing.assert_array_equal(h_all, h_cut)
    assert sent_all == 30_000 and 3 * size < sent_cut < 5 * size


def test_too_few_rows_below_the_cutoff_sample_again_from_every_row(tmp_path, monkeypatch):
    v, _ = planted_embeddings(6000, 8, dup_share=0.2, seed=6)
    p = dc.CellParams(threshold=THR, exact_below=1000, cell_size=256)
    t_ref, s_ref = _run(tmp_path, "ref", v, p)
    monkeypatch.setattr(dc, "sample_cutoff", lambda n, size: 1 << 50)    # ~0 rows below it
    t_low, s_low = _run(tmp_path, "low", v, p)
    assert s_low["sample"] == s_ref["sample"] == dc.sample_size(6000, p)
    assert t_low.sort_by("key").equals(t_ref.sort_by("key"))


def test_bench_runner_floor_moves_every_row_through_the_shuffle():
    """bench/scale.py's runner floor (the DirectRunner's GroupByKey alone on what the search shuffles
    at the least) counts every row, the last, partial file included, with and without the shuffle."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "scale.py")
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    # 12 files (the last of 5,000 rows) into one group per cell (57), on two worker processes; raises if a
    # row is missing
    r = scale.runner_floor(115_000, 2)
    assert r["n"] == 115_000 and r["groups"] == dc.cell_count(115_000, dc.CellParams(threshold=THR)) > 1
    assert r["shuffled_mib"] == round(115_000 * (scale.DIM * 2 + 8) / 2**20)
    pieces = list(scale._floor_rows(2, 5_000, 3))
    assert sum(len(ids) for _, (ids, _) in pieces) == 5_000 and all(0 <= g < 3 for g, _ in pieces)
    assert pieces[0][1][1].dtype == np.float16 and pieces[0][1][1].shape == (scale.FLOOR_PIECE, scale.DIM)


def test_local_search_that_cannot_fit_memory_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
    """On the DirectRunner the search's shuffle sits in memory (~10x its bytes, bench/scale.py
    --floor-only): a run that cannot fit memory and swap stops with one line before the search
    (not killed mid-run); one that may not fit what is free now warns; other runners are not checked."""
    import pipelines.dedup_cells as pdc
    from wit_builder.core import WitError
    v, _ = planted_embeddings(600, 16, seed=3)
    params = dc.CellParams(threshold=THR)
    monkeypatch.setattr(pdc, "_meminfo", lambda: {"MemTotal": 10_000, "SwapFree": 0, "MemAvailable": 5_000})
    with pytest.raises(WitError, match=r"The DirectRunner would hold ~0\.\d GB .*600 rows of 16-d.*distributed runner"
                                      r".*WIT_DEDUP_MEMORY_CHECK=warn") as e:
        _run(tmp_path, "tight", v, params)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "tight" / ".wit-work-cells").exists() and not (tmp_path / "tight" / "decisions.parquet").exists()
    monkeypatch.setenv("WIT_DEDUP_MEMORY_CHECK", "warn")         # the user's override: a warning instead
    t, _ = _run(tmp_path, "forced", v, params)
    assert t.num_rows == 600 and "wit dedup: warning: the DirectRunner would hold" in capsys.readouterr().err
    monkeypatch.delenv("WIT_DEDUP_MEMORY_CHECK")
    need = pdc.local_search_memory(600, 16, 4)
    monkeypatch.setattr(pdc, "_meminfo", lambda: {"MemTotal": 10 * need, "SwapFree": 0, "MemAvailable": need // 2})
    t, _ = _run(tmp_path, "warned", v, params)
    assert t.num_rows == 600 and "wit dedup: warning: the DirectRunner would hold" in capsys.readouterr().err
    monkeypatch.setattr(pdc, "_meminfo", lambda: {"MemTotal": 10, "MemAvailable": 1})
    pdc.check_local_memory(10**9, 256, BeamOptions(runner="DataflowRunner"))   # no check off the DirectRunner
    assert pdc.local_search_memory(2_000_000, 256) > 10e9                       # 11-13.5 GB measured at 2M
