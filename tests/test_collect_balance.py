"""Balancing: MetaCLIP's keep probability, the deterministic draw, realised vs expected sizes."""
import numpy as np
import pyarrow as pa
import pytest

from wit_builder.balance import (balance_table, count_queries, head_tail, pair_keep_prob, plot_balance,
                                 query_keep_prob, uniform_draw)
from wit_builder.collect import MATCHED_SCHEMA, compute_uid


def test_query_keep_prob():
    p = query_keep_prob(np.array([0, 10, 20000, 20001, 80000]), 20000)
    assert p.tolist() == [1.0, 1.0, 1.0, 20000 / 20001, 0.25]


def test_pair_keep_prob_is_one_minus_product():
    p_query = np.array([0.5, 0.5, 1.0, 0.1])
    offsets = np.array([0, 1, 3, 5, 6])
    ids = np.array([0, 0, 1, 2, 3, 3])
    got = pair_keep_prob(offsets, ids, p_query)
    assert got == pytest.approx([0.5, 0.75, 1.0, 0.1])


def test_uniform_draw_is_deterministic_and_uniform():
    uids = [compute_uid(f"https://a.org/{i}.jpg", "t") for i in range(20000)]
    a = uniform_draw(uids, 0)
    assert np.array_equal(a, uniform_draw(uids, 0))
    assert np.array_equal(a[::-1], uniform_draw(uids[::-1], 0))       # order does not matter
    b = uniform_draw(uids, 1)
    assert not np.array_equal(a, b)
    assert ((a >= 0) & (a < 1)).all()
    hist = np.histogram(a, bins=10, range=(0, 1))[0]
    assert np.abs(hist - 2000).max() < 5 * np.sqrt(2000 * 0.9)


def _matched_table(seed=0):
    """Synthetic matched rows: query 0 is huge, 1 is mid, 2..9 are small; rows match 1-3 queries."""
    rng = np.random.default_rng(seed)
    sizes = [20000, 2000] + [40] * 8
    rows = []
    for q, n in enumerate(sizes):
        extra = rng.integers(0, 10, size=n)
        shared = rng.random(n) < 0.02
        rows += [sorted({q, int(e)}) if s else [q] for e, s in zip(extra, shared)]
    uids = [compute_uid(f"https://img.example/{i}.jpg", f"text {i}") for i in range(len(rows))]
    n = len(rows)
    return pa.Table.from_arrays([
        pa.array(uids), pa.array([f"https://img.example/{i}.jpg" for i in range(n)]),
        pa.array([f"text {i}" for i in range(n)]), pa.array([None] * n, pa.string()), pa.array(["s"] * n),
        pa.array(["en"] * n), pa.array([1.0] * n, pa.float32()), pa.array(rows, pa.list_(pa.int32()))],
        schema=MATCHED_SCHEMA)


@pytest.mark.parametrize("seed", [0, 1])
def test_realised_size_is_within_binomial_tolerance(seed):
    table = _matched_table()
    counts = count_queries(table.column("query_ids"), 10)
    cap = 1000
    kept, st = balance_table(table, query_keep_prob(counts, cap), seed)
    sd = np.sqrt(st["size_variance"])
    assert abs(st["kept"] - st["expected_size"]) <= 5 * sd + 1
    assert kept.num_rows == st["kept"] and st["matched"] == table.num_rows
    assert kept.schema.names == MATCHED_SCHEMA.names + ["keep_prob"]
    # expected size = sum of keep probabilities, recomputed here from the formula
    p_q = np.minimum(1.0, cap / np.maximum(counts, 1))
    rows = table.column("query_ids").to_pylist()
    row_p = [1 - np.prod([1 - p_q[q] for q in row]) for row in rows]
    assert st["expected_size"] == pytest.approx(sum(row_p))
    # per query: kept pairs within binomial tolerance of the sum of their keep probabilities
    e, v = np.zeros(10), np.zeros(10)
    for row, p in zip(rows, row_p):
        e[row] += p
        v[row] += p * (1 - p)
    kc = count_queries(kept.column("query_ids"), 10)
    assert (np.abs(kc - e) <= 5 * np.sqrt(v) + 1).all()
    # head queries end near the cap (plus pairs shared with tail queries); tail queries keep all
    assert cap * 0.8 < kc[0] < cap * 1.5 and cap * 0.8 < kc[1] < cap * 1.5
    assert (kc[2:] == counts[2:]).all()


def test_same_seed_same_rows_other_seed_other_rows():
    table = _matched_table()
    p = query_keep_prob(count_queries(table.column("query_ids"), 10), 500)
    a, _ = balance_table(table, p, 7)
    b, _ = balance_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), p, 7)
    assert sorted(a.column("uid").to_pylist()) == sorted(b.column("uid").to_pylist())
    c, _ = balance_table(table, p, 8)
    assert set(a.column("uid").to_pylist()) != set(c.column("uid").to_pylist())


def test_head_tail_and_plot(tmp_path):
    counts = np.array([0, 5, 20000, 20001, 90000])
    assert head_tail(counts, 20000) == {"queries_matched": 4, "head_queries": 2, "tail_queries": 2}
    plot_balance(counts, np.array([0, 5, 20000, 19950, 20100]), 20000, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
