"""`wit balance --pool`: MetaCLIP's balancing rule applied again to what survived download and
dedup, checked against the rule computed here independently; then `wit shards --dedup OUT`."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from download_testlib import DOWNLOAD_SCHEMA, image_bytes, uid_of
from pipelines import balance as balance_stage
from pipelines import cli
from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.balance import (BalanceConfig, balance_table, count_queries, draw_pool, pool_shard, query_keep_prob,
                                 survivor_counts, uniform_draw)
from wit_builder.collect import MATCHED_SCHEMA
from wit_builder.schemas import DECISIONS_SCHEMA

S, F = "success", "failed_to_download"
CAP = 4
SHARDS = 3


def scenario() -> list[dict]:
    """Rows of a download output, each with its query ids and what happened to it.

    q0 is a head query before and after the losses (20 in the pool, 14 survive; 3 of its rows also
    match the tail query q3); q1 is above the cap only before the losses (8 -> 4); q2 a tail
    query; q4 loses every sample; q5 a second head query; one successful row has no query id.
    """
    spec = []   # (query_ids, loss): loss None, "fail", "dup", "undecodable", "absent" (no decisions row)
    spec += [([0, 3] if i < 3 else [0], "fail" if i in (5, 6, 7) else "dup" if i in (8, 9) else
              "absent" if i == 10 else None) for i in range(20)]
    spec += [([1], "fail" if i < 3 else "dup" if i == 3 else None) for i in range(7)] + [([1, 5], None)]
    spec += [([2], None)] * 3 + [([3], "undecodable")] + [([4], "fail")] * 2
    spec += [([5], "absent" if i == 0 else None) for i in range(11)] + [([], None)]
    rows = []
    for i, (qids, loss) in enumerate(spec):
        shard, row = i % SHARDS, i // SHARDS
        url, text = f"http://img.test/{i}.jpg", f"caption {i}"
        rows.append({"key": f"{shard:05d}{row:04d}", "shard": shard, "uid": uid_of(url, text), "url": url,
                     "caption": text, "query_ids": qids, "loss": loss,
                     "status": F if loss == "fail" else S})
    return rows


def write_pool(folder: str, rows: list[dict], reverse: bool = False) -> None:
    """IMAGES/NNNNN.{tar,parquet,_stats.json} as `wit download` writes them (rows in completion
    order: key order, or reversed)."""
    os.makedirs(folder, exist_ok=True)
    for shard in range(SHARDS):
        mine = sorted((r for r in rows if r["shard"] == shard), key=lambda r: r["key"], reverse=reverse)
        out, name = [], f"{folder}/{shard:05d}"
        with wds.TarWriter(name + ".tar") as tar:
            for r in mine:
                ok = r["status"] == S
                img = image_bytes("JPEG", (32, 32), (7 * int(r["key"]) % 256, 40, 90)) if ok else None
                meta = {"uid": r["uid"], "query_ids": r["query_ids"], "page_url": None, "caption": r["caption"],
                        "url": r["url"], "key": r["key"], "status": r["status"],
                        "error_message": None if ok else "HTTP Error 404: Not Found",
                        "width": 32 if ok else None, "height": 32 if ok else None,
                        "original_width": 40 if ok else None, "original_height": 30 if ok else None,
                        "sha256": hashlib.sha256(img).hexdigest() if ok else None,
                        "error_kind": None if ok else "http_404"}
                out.append(meta)
                if ok:
                    tar.write({"__key__": r["key"], "jpg": img, "txt": r["caption"], "json": json.dumps(meta)})
        pq.write_table(pa.Table.from_pylist(out, schema=DOWNLOAD_SCHEMA), name + ".parquet")
        with open(name + "_stats.json", "w") as fh:
            json.dump({"count": len(mine)}, fh)


def write_decisions(folder: str, rows: list[dict], reverse: bool = False) -> str:
    """A `wit dedup run`-like decisions.parquet: duplicates in clusters of two with a kept row,
    one undecodable image, and no row for the "absent" samples."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for i, r in enumerate(rows):
        if r["status"] != S or r["loss"] == "absent":
            continue
        dup, bad = r["loss"] == "dup", r["loss"] == "undecodable"
        out.append({"uid": r["uid"], "key": r["key"], "cluster_id": -1 if bad else i, "cluster_size": 0 if bad else
                    2 if dup else 1, "kept": not (dup or bad), "nearest_similarity": 0.97 if dup else 0.2,
                    "nearest_key": None, "shard": f"{r['shard']:05d}.tar", "width": None if bad else 32,
                    "height": None if bad else 32, "status": "corrupt_image" if bad else "ok"})
    out.sort(key=lambda d: d["key"], reverse=reverse)
    pq.write_table(pa.Table.from_pylist(out, schema=DECISIONS_SCHEMA), f"{folder}/decisions.parquet")
    return folder


def draw(uid: str, seed: int) -> float:
    return (int.from_bytes(hashlib.sha256(f"{seed}\npool\n{uid}".encode()).digest()[:8], "big") >> 11) / 2 ** 53


def expected(rows: list[dict], cap: int, seed: int = 0, dedup: bool = True, not_in_dedup: str = "drop") -> dict:
    """MetaCLIP's rule on the survivors, computed here: count_q over survivors, p_q = min(1, cap/count_q),
    a sample is kept when its draw is below 1 - prod(1 - p_q) over its queries."""
    def survives(r):
        if r["status"] != S or not r["query_ids"]:
            return False
        if not dedup:
            return True
        if r["loss"] == "absent":
            return not_in_dedup == "keep"
        return r["loss"] not in ("dup", "undecodable")
    alive = [r for r in rows if survives(r)]
    count = Counter(q for r in alive for q in r["query_ids"])
    p = {q: min(1.0, cap / c) for q, c in count.items()}
    kept = {}
    for r in alive:
        prob = 1.0 - float(np.prod([1.0 - p[q] for q in r["query_ids"]]))
        kept[r["key"]] = (draw(r["uid"], seed) < prob, prob)
    return {"count": count, "kept": kept, "p": p}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("pool")
    rows = scenario()
    write_pool(str(base / "images"), rows)
    write_decisions(str(base / "dedup"), rows)
    return str(base / "images"), str(base / "dedup"), rows


def rebalance(*args) -> int:
    return cli.main(["balance", *args])


@pytest.fixture(scope="module")
def standard(pool, tmp_path_factory):
    """`wit balance --pool IMAGES --dedup DEDUP --per-query-cap 4 --out OUT`, run once."""
    images, dedup, _ = pool
    out = str(tmp_path_factory.mktemp("standard") / "rebalanced")
    assert rebalance("--pool", images, "--dedup", dedup, "--per-query-cap", str(CAP), "--out", out) == 0
    return out


def read_decisions(out) -> dict:
    return {d["key"]: d for d in pq.read_table(f"{out}/decisions.parquet").to_pylist()}


def test_pool_rebalance_follows_metaclips_rule_over_the_survivors(pool, standard):
    images, dedup, rows = pool
    out = standard
    want = expected(rows, CAP)
    got = read_decisions(out)
    assert sorted(got) == sorted(r["key"] for r in rows)          # one row per download row
    kept = {k for k, d in got.items() if d["kept"]}
    assert kept == {k for k, (hit, _) in want["kept"].items() if hit}
    for key, (hit, prob) in want["kept"].items():
        assert got[key]["keep_prob"] == pytest.approx(prob)
        assert got[key]["outcome"] == ("kept" if hit else "balanced_out")
    # the scenario exercises what it claims: q0 is thinned, q1 was above the cap only before the losses
    by_query = {q: [r for r in rows if q in r["query_ids"]] for q in range(6)}
    q0 = [r["key"] for r in by_query[0] if r["key"] in want["kept"]]
    assert len(q0) == 14 and 0 < sum(k in kept for k in q0) < 14
    assert len(by_query[1]) > CAP >= want["count"][1] and want["p"][1] == 1.0
    assert all(r["key"] in kept for r in by_query[1] if r["key"] in want["kept"])
    assert all(r["key"] in kept for r in by_query[0][:3] if r["key"] in want["kept"])  # shared with tail q3

    counts = pq.read_table(f"{out}/counts.parquet").to_pylist()
    assert [c["query_id"] for c in counts] == [0, 1, 2, 3, 4, 5]
    for c in counts:
        q = c["query_id"]
        assert c["pooled"] == len(by_query[q]) and c["count"] == want["count"].get(q, 0)
        assert c["kept"] == sum(r["key"] in kept for r in by_query[q])
        assert c["keep_prob"] == pytest.approx(min(1.0, CAP / max(c["count"], 1)))

    st = json.loads(open(f"{out}/stats.json").read())
    assert (st["stage"], st["mode"], st["per_query_cap"], st["seed"]) == ("balance", "pool", CAP, 0)
    assert st["rows"] == len(rows) and st["survivors"] == len(want["kept"]) and st["kept"] == len(kept)
    assert st["losses"] == {"failed_download": 8, "dropped_by_dedup": 4, "not_in_dedup": 2, "no_query_ids": 1}
    assert (st["pool_queries"], st["pool_head_queries"]) == (6, 3)      # q0, q1, q5 above the cap before
    assert (st["queries_matched"], st["head_queries"], st["tail_queries"]) == (5, 2, 3)
    assert st["expected_size"] == pytest.approx(sum(p for _, p in want["kept"].values()), abs=1e-3)
    assert json.loads(open(f"{out}/_wit/complete.json").read())["stage"] == "balance"


def test_losses_are_never_kept_and_samples_missing_from_the_decisions_follow_the_option(pool, standard, tmp_path):
    images, dedup, rows = pool
    loss = {r["key"]: r["loss"] for r in rows}
    got = read_decisions(standard)
    names = {"fail": "failed_download", "dup": "dropped_by_dedup", "undecodable": "dropped_by_dedup",
             "absent": "not_in_dedup"}
    for key, d in got.items():
        if loss[key] is not None:
            assert not d["kept"] and d["outcome"] == names[loss[key]] and d["keep_prob"] is None
    assert [d["outcome"] for d in got.values()].count("no_query_ids") == 1
    undecodable = next(d for k, d in got.items() if loss[k] == "undecodable")
    assert (undecodable["cluster_id"], undecodable["dedup_kept"]) == (-1, False)

    # --not-in-dedup keep: the samples dedup never saw are counted and drawn like the others
    out_keep = str(tmp_path / "keep")
    assert rebalance("--pool", images, "--dedup", dedup, "--not-in-dedup", "keep", "--per-query-cap", str(CAP),
                     "--out", out_keep) == 0
    want = expected(rows, CAP, not_in_dedup="keep")
    got = read_decisions(out_keep)
    assert {k for k, d in got.items() if d["kept"]} == {k for k, (hit, _) in want["kept"].items() if hit}
    absent = [k for k in got if loss[k] == "absent"]
    assert all(got[k]["outcome"] in ("kept", "balanced_out") and got[k]["dedup_kept"] is None for k in absent)

    # without --dedup only failed downloads are lost (and --queries names the queries)
    out_plain = str(tmp_path / "plain")
    (tmp_path / "queries.txt").write_text("".join(f"word{q}\n" for q in range(6)))
    assert rebalance("--pool", images, "--per-query-cap", str(CAP), "--seed", "3", "--out", out_plain,
                     "--queries", str(tmp_path / "queries.txt")) == 0
    want = expected(rows, CAP, seed=3, dedup=False)
    got = read_decisions(out_plain)
    assert {k for k, d in got.items() if d["kept"]} == {k for k, (hit, _) in want["kept"].items() if hit}
    assert all(d["cluster_id"] is None for d in got.values())
    names = pq.read_table(f"{out_plain}/counts.parquet").column("query").to_pylist()
    assert names == [f"word{q}" for q in range(6)]


def test_output_does_not_depend_on_row_or_file_order_or_workers(pool, standard, tmp_path):
    images, dedup, rows = pool
    args = ["--per-query-cap", str(CAP), "--dedup"]
    out1 = standard
    reference = pq.read_table(f"{out1}/decisions.parquet")

    # rows in other completion orders, decisions in another order
    images_r, dedup_r = str(tmp_path / "images_r"), str(tmp_path / "dedup_r")
    write_pool(images_r, rows, reverse=True)
    write_decisions(dedup_r, rows, reverse=True)
    out_r = str(tmp_path / "reversed")
    assert rebalance("--pool", images_r, *args, dedup_r, "--out", out_r) == 0
    other = pq.read_table(f"{out_r}/decisions.parquet")
    assert other.drop_columns(["shard"]).equals(reference.drop_columns(["shard"]))

    # the composite, fed the download shards in reverse order
    out_c = str(tmp_path / "composite")
    os.makedirs(out_c)
    target = balance_stage.PoolTarget(images, out_c, BalanceConfig(CAP, 0), f"{dedup}/decisions.parquet",
                                      header={"stage": "balance"})
    run_pipeline(lambda p: p | beam.Create(["00002", "00001", "00000"]) | balance_stage.RebalancePool(target),
                 BeamOptions())
    assert pq.read_table(f"{out_c}/decisions.parquet").equals(reference)

    # two worker processes write the same bytes
    out2 = str(tmp_path / "two")
    assert rebalance("--pool", images, *args, dedup, "--out", out2, "--workers", "2") == 0
    with open(f"{out1}/decisions.parquet", "rb") as a, open(f"{out2}/decisions.parquet", "rb") as b:
        assert a.read() == b.read()
    s1, s2 = (json.loads(open(f"{o}/stats.json").read()) for o in (out1, out2))
    assert s1 == s2


def test_each_step_gets_only_its_own_download_shards_decisions(pool, standard, tmp_path, monkeypatch):
    """As in `wit shards`: the decisions are read one row group per element and joined by download
    shard name, so the step of a download shard holds that shard's decisions only (never the whole
    table), and the output is the same."""
    import wit_builder.balance as lib
    images, _, rows = pool
    dedup = str(tmp_path / "dedup")
    write_decisions(dedup, rows)
    table = pq.read_table(f"{dedup}/decisions.parquet")
    stray = [{**table.slice(0, 1).to_pylist()[0], "key": f"00009{i:04d}", "uid": "f" * 32} for i in range(2)]
    table = pa.concat_tables([table, pa.Table.from_pylist(stray, schema=table.schema)])  # no such download shard
    pq.write_table(table, f"{dedup}/decisions.parquet", row_group_size=4)   # groups straddle download shards
    seen, groups = [], []
    pool_shard_, read_group = lib.pool_shard, getattr(lib, "read_pool_decision_group", None)

    def spy_pool_shard(rows_, shard, decisions, not_in_dedup="drop"):
        seen.append((shard, set(decisions.rows), decisions.table.num_rows))
        return pool_shard_(rows_, shard, decisions, not_in_dedup)

    def spy_group(decisions, group, route):
        groups.append(group)
        return read_group(decisions, group, route)

    monkeypatch.setattr(lib, "pool_shard", spy_pool_shard)
    monkeypatch.setattr(lib, "read_pool_decision_group", spy_group, raising=False)
    out = str(tmp_path / "out")
    assert rebalance("--pool", images, "--dedup", dedup, "--per-query-cap", str(CAP), "--out", out) == 0

    keys = table.column("key").to_pylist()
    assert sorted(shard for shard, _, _ in seen) == [f"{images}/{n:05d}.tar" for n in range(SHARDS)]
    for shard, got, n in seen:
        name = os.path.basename(shard)[:-len(".tar")]
        own = {k for k in keys if k.startswith(name)}
        assert got == own and n == len(own), name
    row_groups = pq.ParquetFile(f"{dedup}/decisions.parquet").metadata.num_row_groups
    assert row_groups > SHARDS and sorted(groups) == list(range(row_groups))
    assert pq.read_table(f"{out}/decisions.parquet").equals(pq.read_table(f"{standard}/decisions.parquet"))
    assert [p for p in os.listdir(out) if p.startswith(".")] == []      # the per-shard parts are gone


def test_shards_from_the_rebalanced_pool_hold_only_the_kept_samples(pool, standard, tmp_path):
    images, dedup, rows = pool
    out = standard
    kept = sorted(k for k, (hit, _) in expected(rows, CAP)["kept"].items() if hit)
    shards = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", images, "--dedup", out, "--out", shards, "--samples-per-shard", "5"]) == 0
    manifest = json.loads(open(f"{shards}/manifest.json").read())
    samples = []
    for s in manifest["shards"]:
        samples += pq.read_table(f"{shards}/{s['parquet']}").to_pylist()
    assert [s["key"] for s in samples] == kept and manifest["totals"]["samples"] == len(kept)
    assert manifest["totals"]["not_in_dedup"] == 0
    decisions = read_decisions(out)
    for s in samples:     # dedup's cluster columns are carried through the re-balance
        assert s["cluster_id"] == decisions[s["key"]]["cluster_id"] is not None
    per_query = Counter(q for s in samples for q in s["query_ids"])
    counts = {c["query_id"]: c["kept"] for c in pq.read_table(f"{out}/counts.parquet").to_pylist()}
    assert {q: n for q, n in per_query.items()} == {q: n for q, n in counts.items() if n}


def test_a_pool_collected_with_a_larger_cap_comes_down_to_the_cap():
    """The pool's draw is independent of collect's: collect with cap 2,000 over 20,000 pairs of
    one query, lose a fifth, re-balance to 1,000: about 1,000 stay. Re-using collect's draw (same
    seed, no stream) would keep all ~1,600, since every survivor already passed a lower bar."""
    n = 20_000
    uids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(n)]
    matched = pa.table({"uid": uids, "url": [f"http://x/{i}" for i in range(n)], "text": ["t"] * n,
                        "page_url": pa.nulls(n, pa.string()), "source": ["s"] * n, "lang": ["en"] * n,
                        "lang_prob": pa.array([1.0] * n, pa.float32()),
                        "query_ids": pa.array([[0]] * n, pa.list_(pa.int32()))}, schema=MATCHED_SCHEMA)
    collected, _ = balance_table(matched, query_keep_prob(count_queries(matched.column("query_ids")), 2000), 0)
    lost = np.array([int(u[:4], 16) % 5 == 0 for u in collected.column("uid").to_pylist()])
    m = collected.num_rows
    rows = pa.table({"key": [f"{i:09d}" for i in range(m)], "uid": collected.column("uid"),
                     "query_ids": collected.column("query_ids"), "status": np.where(lost, F, S).tolist(),
                     "width": pa.nulls(m, pa.int32()), "height": pa.nulls(m, pa.int32())})
    table = pool_shard(rows, "x.tar", None)
    survivors = survivor_counts(table)
    cfg = BalanceConfig(1000, 0)
    decided, stats = draw_pool(table, cfg.keep_prob(survivors), cfg.seed)
    sd = np.sqrt(stats["size_variance"])
    assert 1400 < survivors[0] < 1800
    assert abs(stats["kept"] - 1000) <= 5 * sd + 1 and stats["kept"] == sum(decided.column("kept").to_pylist())
    survivor_uids = [u for u, o in zip(table.column("uid").to_pylist(), table.column("outcome").to_pylist())
                     if o == "survivor"]
    p = cfg.keep_prob(survivors)[0]
    assert (uniform_draw(survivor_uids, 0) < p).all()        # collect's own draw would keep them all
    assert not np.array_equal(uniform_draw(survivor_uids, 0), uniform_draw(survivor_uids, 0, "pool"))


def test_bad_input_is_one_line(pool, tmp_path, capsys):
    images, dedup, rows = pool
    out = str(tmp_path / "out")
    assert rebalance("--matched", images, "--dedup", dedup, "--per-query-cap", "3", "--out", out) == 2
    assert "--dedup and --not-in-dedup go with --pool" in capsys.readouterr().err
    assert rebalance("--pool", images, "--not-in-dedup", "keep", "--per-query-cap", "3", "--out", out) == 2
    assert "--not-in-dedup goes with --dedup" in capsys.readouterr().err
    assert rebalance("--pool", str(tmp_path / "none"), "--per-query-cap", "3", "--out", out) == 2
    assert "not a directory" in capsys.readouterr().err
    assert rebalance("--pool", images, "--per-query-cap", "3", "--out", images) == 2
    assert "--out must differ from --pool" in capsys.readouterr().err
    assert rebalance("--pool", images, "--dedup", str(tmp_path / "nodedup"), "--per-query-cap", "3", "--out", out) == 2
    assert "run `wit dedup run` first" in capsys.readouterr().err
    assert rebalance("--pool", images, "--per-query-cap", "0", "--out", out) == 2
    assert "--per-query-cap must be at least 1" in capsys.readouterr().err

    # a download of pairs without query ids (a user's own table)
    plain = str(tmp_path / "plain_images")
    write_pool(plain, rows)
    for shard in range(SHARDS):
        path = f"{plain}/{shard:05d}.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["query_ids"]), path)
    assert rebalance("--pool", plain, "--per-query-cap", "3", "--out", out) == 2
    assert "has no query_ids column" in capsys.readouterr().err

    # decisions of another download: same key, another uid
    other = [dict(r) for r in rows]
    other[0]["uid"] = "0" * 32
    bad = write_decisions(str(tmp_path / "bad"), other)
    assert rebalance("--pool", images, "--dedup", bad, "--per-query-cap", "3", "--out", out) == 2
    assert "decisions of another download" in capsys.readouterr().err

    # nothing survived: every successful sample dropped by dedup
    gone = [dict(r, loss="dup") for r in rows]
    none_kept = write_decisions(str(tmp_path / "gone"), gone)
    assert rebalance("--pool", images, "--dedup", none_kept, "--per-query-cap", "3", "--out", out) == 2
    assert "nothing usable came out" in capsys.readouterr().err



def test_a_finished_run_resumes_and_other_options_need_overwrite(pool, standard, capsys):
    images, dedup, _ = pool
    before = os.path.getmtime(f"{standard}/decisions.parquet")
    assert rebalance("--pool", images, "--dedup", dedup, "--per-query-cap", str(CAP), "--out", standard) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and f"wit shards --images {images} --dedup {standard}" in printed
    assert os.path.getmtime(f"{standard}/decisions.parquet") == before
    assert rebalance("--pool", images, "--dedup", dedup, "--per-query-cap", "2", "--out", standard) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert rebalance("--pool", images, "--per-query-cap", str(CAP), "--out", standard) == 2   # no --dedup now
