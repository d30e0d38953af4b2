"""`wit collect` / `wit balance` end to end on the DirectRunner: outputs, accounting, dedup,
determinism across runs and worker counts, resume, re-balancing, damaged inputs."""
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collect_data import QUERIES, gzip_members, make_pages, write_queries
from pipelines import cli
from wit_builder.collect import BALANCED_SCHEMA, MATCHED_SCHEMA
from wit_builder.matcher import naive_match
from wit_builder.sim.webgen import Image, Page, write_warc, write_wat

CAP = 15


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    write_queries(d / "queries.parquet")
    inp = d / "in"
    pages = make_pages(120)
    pages[3] = Page(pages[3].url, images=[
        Image("fr.jpg", alt="une très belle photo de la plage au coucher du soleil sunset"),  # French
        Image("data:image/png;base64,AAAA", alt="a cat"),                          # data: URL
        Image("big.jpg", alt="cat " * 100_000),                                    # megabyte alt
        Image("ok.jpg", alt="the red car in New York at sunset")])
    write_wat(pages[:60], str(inp / "CC-a.warc.wat.gz"))
    write_wat(pages[60:], str(inp / "CC-b.warc.wat.gz"))
    write_warc(pages[30:90], str(inp / "CC-c.warc.gz"))             # overlaps both WATs: duplicates
    # a damaged WAT: one corrupt gzip member and one record with invalid JSON, rest readable
    write_wat(make_pages(10, seed=5, start=500), str(d / "tmp.wat.gz"), all_records=False)
    data = bytearray((d / "tmp.wat.gz").read_bytes())
    offs = gzip_members(bytes(data))
    data[offs[4] + 30:offs[4] + 60] = b"\x00" * 30
    from warcio.warcwriter import WARCWriter
    import io
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    body = b'{"Envelope": {"Links": [{"path": "IMG@/src", "url": "x.jpg"'           # cut short
    w.write_record(w.create_warc_record("https://bad.example/", "metadata", payload=io.BytesIO(body),
                                        length=len(body), warc_content_type="application/json"))
    (inp / "CC-d.warc.wat.gz").write_bytes(bytes(data[:offs[7]]) + buf.getvalue() + bytes(data[offs[7]:]))
    # a LAION-style table repeating some WAT pairs
    pairs = [(img.src if img.src.startswith("http") else None, img.alt) for p in pages[:20] for img in p.images]
    pairs = [(u, t) for u, t in pairs if u]
    pq.write_table(pa.table({"url": [u for u, _ in pairs] + ["https://t.example/new.jpg"],
                             "caption": [t for _, t in pairs] + ["an old city street"]}), str(inp / "laion.parquet"))
    return d


def _collect(web, out, *extra):
    code = cli.main(["collect", "--queries", str(web / "queries.parquet"), "--input", str(web / "in"),
                     "--out", str(out), "--per-query-cap", str(CAP), "--runner", "DirectRunner", *extra])
    return code


@pytest.fixture(scope="module")
def run_a(web):
    assert _collect(web, web / "out_a") == 0
    return web / "out_a"


def _read_dir(path):
    return pq.read_table(str(path))


def _stats(out):
    return json.loads((out / "stats.json").read_text())


def test_outputs_follow_the_schema(run_a):
    files = sorted(p.name for p in (run_a / "matched").iterdir())
    assert files == [f"part-{k:05d}-of-00005.parquet" for k in range(5)]
    assert sorted(p.name for p in (run_a / "balanced").iterdir()) == files
    for name in files:
        assert pq.read_schema(str(run_a / "matched" / name)).equals(MATCHED_SCHEMA)
        assert pq.read_schema(str(run_a / "balanced" / name)).equals(BALANCED_SCHEMA)
    counts = pq.read_table(str(run_a / "counts.parquet"))
    assert counts.schema.names[:4] == ["query_id", "query", "count", "keep_prob"]
    assert counts.schema.field("query_id").type == pa.int32() and counts.schema.field("count").type == pa.int64()
    assert (run_a / "balance.png").read_bytes()[:4] == b"\x89PNG"


def test_matched_rows_are_unique_sorted_sharded_and_correct(run_a):
    for k in range(5):
        t = pq.read_table(str(run_a / "matched" / f"part-{k:05d}-of-00005.parquet"))
        uids = t.column("uid").to_pylist()
        assert uids == sorted(uids)
        assert all(int(u[:8], 16) % 5 == k for u in uids)
    t = _read_dir(run_a / "matched")
    rows = t.to_pylist()
    assert len({r["uid"] for r in rows}) == len(rows)
    assert len({(r["url"], r["text"]) for r in rows}) == len(rows)
    for r in rows:
        assert r["uid"] == hashlib.sha256(f"{r['url']}\n{r['text']}".encode()).hexdigest()[:32]
        assert r["url"].startswith(("http://", "https://"))
        assert r["query_ids"] == naive_match(r["text"], QUERIES) and r["query_ids"]
        assert r["lang"] == "en" and 0 < r["lang_prob"] <= 1
    # relative srcs were resolved against their page
    assert "https://site3.example.org/p/ok.jpg" in {r["url"] for r in rows}
    assert "https://t.example/new.jpg" in {r["url"] for r in rows}


def test_stats_account_for_every_pair(run_a):
    st = _stats(run_a)
    from wit_builder.schemas import OUTPUTS
    assert set(OUTPUTS["collect"].stats_keys) <= set(st)   # the keys the code promises (docs/schemas.md)
    # the cap and seed sit at the top of the config, as before BalanceConfig, so older runs resume
    assert st["config"]["per_query_cap"] == st["per_query_cap"] and "balance" not in st["config"]
    assert st["pairs_extracted"] == sum(st["dropped"].values()) + st["matched"]
    assert st["matched"] == _read_dir(run_a / "matched").num_rows
    assert st["kept"] == _read_dir(run_a / "balanced").num_rows
    assert st["dropped"]["duplicate"] >= 200     # pages 30..89 are in a WAT and in the WARC (300 pairs)
    assert st["dropped"]["language"] >= 1 and st["dropped"]["no_match"] > 0
    assert st["dropped"]["data_url"] == 1 and st["dropped"]["text_too_long"] == 1
    assert st["skipped"]["corrupt_gzip"] == 1 and st["skipped"]["invalid_json"] == 1
    assert st["files_read"] == 5 and st["records_read"] > 300
    assert abs(st["kept"] - st["expected_size"]) <= 5 * st["expected_size_sd"] + 1
    assert st["head_queries"] + st["tail_queries"] == st["queries_matched"]


def test_counts_and_keep_probabilities(run_a):
    counts = pq.read_table(str(run_a / "counts.parquet")).to_pylist()
    matched = _read_dir(run_a / "matched")
    balanced = _read_dir(run_a / "balanced")
    recount = np.bincount(np.concatenate([np.asarray(x) for x in matched.column("query_ids").to_pylist()]),
                          minlength=len(QUERIES))
    kept = np.bincount(np.concatenate([np.asarray(x) for x in balanced.column("query_ids").to_pylist()]),
                       minlength=len(QUERIES))
    assert [c["query_id"] for c in counts] == [i for i in range(len(QUERIES)) if recount[i]]
    for c in counts:
        assert c["query"] == QUERIES[c["query_id"]]
        assert c["count"] == recount[c["query_id"]] and c["kept"] == kept[c["query_id"]]
        assert c["keep_prob"] == pytest.approx(min(1.0, CAP / c["count"]))
    p_q = {c["query_id"]: c["keep_prob"] for c in counts}
    for r in balanced.to_pylist():
        assert r["keep_prob"] == pytest.approx(1 - np.prod([1 - p_q[q] for q in r["query_ids"]]))
    assert set(balanced.column("uid").to_pylist()) <= set(matched.column("uid").to_pylist())


def test_same_output_with_two_workers(web, run_a):
    out_b = web / "out_b"
    assert _collect(web, out_b, "--workers", "2") == 0
    for sub in ("matched", "balanced"):
        for f in sorted((run_a / sub).iterdir()):
            assert f.read_bytes() == (out_b / sub / f.name).read_bytes(), f
    assert (run_a / "counts.parquet").read_bytes() == (out_b / "counts.parquet").read_bytes()
    a, b = _stats(run_a), _stats(out_b)
    for st in (a, b):
        st.pop("cpu_seconds")
        st["config"].pop("inputs")
    assert a == b


def test_rerun_is_a_no_op_and_other_options_need_overwrite(web, run_a, capsys):
    before = (run_a / "stats.json").stat().st_mtime_ns
    assert _collect(web, run_a) == 0
    assert "already complete" in capsys.readouterr().out
    assert (run_a / "stats.json").stat().st_mtime_ns == before
    assert cli.main(["collect", "--queries", str(web / "queries.parquet"), "--input", str(web / "in"),
                     "--out", str(run_a), "--per-query-cap", "99", "--runner", "DirectRunner"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_rebalance_without_rereading_inputs(web, run_a):
    same = web / "bal_same"
    assert cli.main(["balance", "--matched", str(run_a), "--per-query-cap", str(CAP), "--out", str(same),
                     "--runner", "DirectRunner"]) == 0
    for f in sorted((run_a / "balanced").iterdir()):
        assert f.read_bytes() == (same / "balanced" / f.name).read_bytes()
    assert pq.read_table(str(same / "counts.parquet")).equals(pq.read_table(str(run_a / "counts.parquet")))
    st = _stats(same)
    assert st["stage"] == "balance" and st["kept"] == _stats(run_a)["kept"]

    bigger = web / "bal_40"
    assert cli.main(["balance", "--matched", str(run_a), "--per-query-cap", "40", "--out", str(bigger),
                     "--seed", "3", "--runner", "DirectRunner"]) == 0
    st40 = _stats(bigger)
    assert st40["matched"] == _stats(run_a)["matched"] and st40["per_query_cap"] == 40
    assert st40["kept"] > st["kept"] and st40["head_queries"] <= st["head_queries"]
    assert abs(st40["kept"] - st40["expected_size"]) <= 5 * st40["expected_size_sd"] + 1
    counts = pq.read_table(str(bigger / "counts.parquet")).to_pylist()
    assert all(c["keep_prob"] == pytest.approx(min(1, 40 / c["count"])) for c in counts)


def test_nothing_matches_gives_empty_valid_outputs(tmp_path):
    from pipelines import collect                   # the Python API the demo uses
    from wit_builder.collect import make_config
    write_queries(tmp_path / "q.parquet", ["zebra crossing", "xylophone"])
    write_wat(make_pages(5), str(tmp_path / "in" / "x.wat.gz"))
    st = collect.run(make_config(str(tmp_path / "q.parquet"), [str(tmp_path / "in")], str(tmp_path / "o"),
                                 num_shards=2, langs=None))
    assert st == _stats(tmp_path / "o")
    assert st["matched"] == 0 and st["kept"] == 0 and st["dropped"]["no_match"] == 25
    for sub in ("matched", "balanced"):
        files = sorted((tmp_path / "o" / sub).iterdir())
        assert [f.name for f in files] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
        assert all(pq.read_table(str(f)).num_rows == 0 for f in files)
    assert pq.read_table(str(tmp_path / "o" / "counts.parquet")).num_rows == 0


def test_cli_errors_are_one_line(tmp_path, web, capsys):
    assert cli.main(["collect", "--queries", str(tmp_path / "missing.parquet"), "--input", str(web / "in"),
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read queries" in err and "Traceback" not in err
    assert cli.main(["collect", "--queries", str(web / "queries.parquet"), "--input", str(tmp_path / "nope*"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "matches no files" in capsys.readouterr().err
    assert cli.main(["balance", "--matched", str(tmp_path), "--per-query-cap", "5", "--out", str(tmp_path / "b")]) == 2
    assert "no matched shards" in capsys.readouterr().err


def test_match_pairs_transform_in_a_test_pipeline(tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from pipelines.collect import MatchPairs, MergeStats
    from wit_builder.collect import CollectConfig
    write_queries(tmp_path / "q.parquet")
    write_wat(make_pages(4), str(tmp_path / "a.wat.gz"))
    cfg = CollectConfig(queries=str(tmp_path / "q.parquet"), inputs=((str(tmp_path / "a.wat.gz"), "wat"),),
                        out=str(tmp_path / "o"), langs=None, num_shards=3)
    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        parts = p | beam.Create(list(cfg.inputs)) | MatchPairs(cfg)
        assert_that(parts["shards"] | beam.Map(lambda kv: kv[0]), equal_to([0, 1, 2]), label="EveryShard")
        stats = parts["stats"] | beam.CombineGlobally(MergeStats())
        assert_that(stats | beam.Map(lambda c: (c["pairs_extracted"], c["files"])), equal_to([(20, 1)]),
                    label="Extracted")
        total = parts["counts"] | beam.Map(lambda c: int(c.sum()) > 0)
        assert_that(total, equal_to([True]), label="Counted")
    matched = pq.read_table(str(tmp_path / "o" / "matched")).to_pylist()
    assert matched and all(r["query_ids"] == naive_match(r["text"], QUERIES) for r in matched)
