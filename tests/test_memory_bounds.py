"""What keeps memory bounded (figures in bench/memory.py): shuffled parts that carry only their
own rows, a local shuffle through files, and embeddings read file by file into one array."""
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder.collect import MATCHED_SCHEMA, compute_uid, split_by_shard
from wit_builder.embeddings import load_embeddings
from wit_builder.schemas import EMBEDDINGS_SCHEMA


def _matched(n):
    rows = [{"uid": compute_uid(f"https://a.org/{i}.jpg", "t" * 200), "url": f"https://a.org/{i}.jpg",
             "text": "t" * 200, "query_ids": [i % 7]} for i in range(n)]
    cols = {f.name: [r.get(f.name) for r in rows] for f in MATCHED_SCHEMA}
    return pa.table(cols, schema=MATCHED_SCHEMA)


def test_a_shard_part_pickles_to_its_own_rows_not_the_whole_batch():
    table = _matched(4000)
    whole = len(pickle.dumps(table))
    parts = list(split_by_shard(table, 8))
    assert sum(p.num_rows for _, p in parts) == 4000
    sizes = [len(pickle.dumps(p)) for _, p in parts]
    assert sum(sizes) < 1.5 * whole, (sum(sizes), whole)   # a slice would pickle the whole batch: 8x


def test_collect_spill_gives_the_same_files_and_leaves_nothing(tmp_path):
    from collect_data import make_pages, write_queries
    from pipelines import collect
    from wit_builder.collect import make_config
    from wit_builder.sim.webgen import write_wat
    write_queries(tmp_path / "q.parquet")
    for i in range(2):
        write_wat(make_pages(30, seed=i, start=50 * i), str(tmp_path / "in" / f"{i}.warc.wat.gz"))
    outs = {}
    for spill in (True, False):
        out = tmp_path / f"o{spill}"
        collect.run(make_config(str(tmp_path / "q.parquet"), [str(tmp_path / "in")], str(out), num_shards=3,
                                langs=None), spill=spill)
        outs[spill] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.parquet")}
        assert not (out / ".wit-work-spill").exists()
    assert outs[True] == outs[False] and len(outs[True]) == 7


def test_embeddings_load_file_by_file_in_key_order(tmp_path):
    rng = np.random.default_rng(0)
    files, expected = [], {}
    for f in range(3):
        keys = [f"{k:04d}" for k in rng.permutation(40)[:10]]
        status = ["ok" if i % 4 else "corrupt_image" for i in range(10)]
        vecs = rng.standard_normal((10, 8)).astype(np.float32)
        emb = [v.tolist() if s == "ok" else None for v, s in zip(vecs, status)]
        path = str(tmp_path / f"{f}.parquet")
        pq.write_table(pa.table({"key": keys, "uid": [f"u{k}{f}" for k in keys], "shard": [f"s{f}"] * 10,
                                 "width": pa.array([1] * 10, pa.int32()), "height": pa.array([None] * 10, pa.int32()),
                                 "status": status, "embedding": pa.array(emb, pa.list_(pa.float32()))},
                                schema=EMBEDDINGS_SCHEMA), path)
        files.append(path)
        for k, s, v in zip(keys, status, vecs):
            expected[(k, f"s{f}", f"u{k}{f}")] = (s, v)
    e = load_embeddings(files[::-1])
    order = sorted(expected)
    assert list(zip(e.key, e.shard, e.uid)) == order
    assert list(e.status) == [expected[k][0] for k in order]
    assert e.height.tolist() == [-1] * 30 and e.width.tolist() == [1] * 30
    ok_keys = [k for k in order if expected[k][0] == "ok"]
    assert np.array_equal(e.vectors, np.stack([expected[k][1] for k in ok_keys]))
