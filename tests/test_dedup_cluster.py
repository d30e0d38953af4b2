"""Neighbour search, connected components, keep rule, `wit dedup run` / `overlap` end to end."""
import io
import math
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from wit_builder.augment import synthetic_image
from pipelines.cli import main as wit_main
from wit_builder.core import WitError
from pipelines import dedup as dedup_stage
from wit_builder.dedup import DedupConfig, cluster_vectors, connected_components, pick_kept
from wit_builder.embeddings import iter_shard_records
from wit_builder.overlap import OverlapConfig, overlap_vectors
from wit_builder.detector import FORMAT, build_model, make_config, save_detector
from wit_builder.sim.fixtures import write_shard


def run_dedup(shards, detector, out, **options):
    return dedup_stage.run(DedupConfig(tuple(shards), detector, out, **options))


def run_overlap(evals, shards, detector, out, **options):
    return dedup_stage.run_overlap(OverlapConfig(tuple(evals), tuple(shards), detector, out, **options))


def _unit(angles_deg, dim=8):
    v = np.zeros((len(angles_deg), dim), np.float32)
    a = np.radians(angles_deg)
    v[:, 0], v[:, 1] = np.cos(a), np.sin(a)
    return v


def test_connected_components_transitive_and_order_independent():
    a = np.array([0, 1, 5, 3])
    b = np.array([1, 2, 6, 5])
    labels = connected_components(8, a, b)
    # {0,1,2} {3,5,6} {4} {7}, numbered by first member
    assert labels.tolist() == [0, 0, 0, 1, 2, 1, 1, 3]
    perm = np.random.default_rng(0).permutation(4)
    assert connected_components(8, b[perm], a[perm]).tolist() == labels.tolist()


def test_chain_of_near_duplicates_is_one_cluster():
    # 0~20 and 20~42 degrees are above cos(23 deg), 0 vs 42 is not: one cluster by transitivity
    v = _unit([0, 20, 42, 120, 121])
    thr = math.cos(math.radians(23))
    assert float(v[0] @ v[2]) < thr
    res = cluster_vectors(v, thr, k=4, pixels=np.array([10, 50, 50, 5, 5]))
    assert res["labels"].tolist() == [0, 0, 0, 1, 1]
    assert res["sizes"].tolist() == [3, 3, 3, 2, 2]
    # keep rule: most pixels, then first row (smallest key)
    assert res["kept"].tolist() == [False, True, False, True, False]
    assert res["nearest"].tolist() == [1, 0, 1, 4, 3]
    assert res["nearest_similarity"][0] == pytest.approx(math.cos(math.radians(20)), abs=1e-5)
    again = cluster_vectors(v, thr, k=4, pixels=np.array([10, 50, 50, 5, 5]))
    assert again["labels"].tolist() == res["labels"].tolist() and again["kept"].tolist() == res["kept"].tolist()


def test_pick_kept_tie_break():
    labels = np.array([0, 1, 0, 1, 2])
    assert pick_kept(labels, np.array([4, 1, 4, 9, 0])).tolist() == [True, False, False, True, True]


def test_ivf_index_agrees_with_exact_on_clustered_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, 32)).astype(np.float32)
    x = np.repeat(centres, 4, axis=0) + 0.02 * rng.normal(size=(400, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    flat = cluster_vectors(x, 0.95, k=8)
    ivf = cluster_vectors(x, 0.95, k=8, exact_below=100, nprobe=16)
    assert flat["index"]["index"] == "IndexFlatIP" and ivf["index"]["index"] == "IndexIVFFlat"
    assert ivf["index"]["nlist"] == 20
    assert flat["labels"].tolist() == ivf["labels"].tolist() == np.repeat(np.arange(100), 4).tolist()


def _detector(path, embed_dim=32):
    cfg = make_config("tiny", image_size=32, embed_dim=embed_dim)
    torch.manual_seed(0)
    save_detector(str(path), {"format": FORMAT, "version": 1, "config": cfg,
                              "model": build_model(cfg).state_dict(), "threshold": 0.995})
    return str(path)


def _jpeg(img, q=92):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


@pytest.fixture(scope="module")
def imgs():
    rng = np.random.default_rng(42)
    return [synthetic_image(rng, (96, 80)) for _ in range(6)]


def _shards(d, imgs):
    d.mkdir(parents=True, exist_ok=True)
    a_bytes = _jpeg(imgs[0])
    write_shard(str(d / "00000.tar"), [
        {"key": "000000000", "image": a_bytes, "width": 96, "height": 80, "uid": "uA"},
        {"key": "000000001", "image": imgs[1], "uid": "uB"},
        {"key": "000000002", "image": imgs[2], "uid": "uC"},
        {"key": "000000003", "image": b"\xff\xd8\xff\xe0 truncated jpeg", "uid": "uBad"},
    ])
    write_shard(str(d / "00001.tar"), [
        {"key": "000010000", "image": imgs[0].resize((192, 160)), "uid": "uA_big"},
        {"key": "000010001", "image": a_bytes, "width": 96, "height": 80, "uid": "uA_dup"},
        {"key": "000010002", "image": imgs[3], "uid": "uD"},
    ])
    # a shard cut off mid-download: its complete records are used, the rest is counted
    write_shard(str(d / "00002.tar"), [{"key": f"00002000{i}", "image": imgs[4 + i], "uid": f"uE{i}"}
                                       for i in range(2)])
    raw = (d / "00002.tar").read_bytes()
    (d / "00002.tar").write_bytes(raw[:len(raw) // 2 + 700])
    return str(d)


def test_dedup_run_end_to_end(tmp_path, imgs, monkeypatch):
    det = _detector(tmp_path / "det.pt")
    shards = _shards(tmp_path / "images", imgs)
    stats = run_dedup([shards], det, str(tmp_path / "out"), threads=1)
    t = pq.read_table(tmp_path / "out" / "decisions.parquet")
    assert t.schema.field("uid").type == pa.string() and t.schema.field("cluster_id").type == pa.int64()
    assert t.schema.field("cluster_size").type == pa.int32() and t.schema.field("kept").type == pa.bool_()
    assert t.schema.field("nearest_similarity").type == pa.float32()
    rows = {r["uid"]: r for r in t.to_pylist()}
    assert stats["skipped"] == {"corrupt_image": 1, "truncated_shard": 1}
    assert "" not in t.column("key").to_pylist() and stats["images"] == t.num_rows == 8  # no marker row
    assert rows["uBad"]["status"] == "corrupt_image" and rows["uBad"]["kept"] is False
    a = [rows[u] for u in ("uA", "uA_big", "uA_dup")]
    assert len({r["cluster_id"] for r in a}) == 1 and all(r["cluster_size"] == 3 for r in a)
    assert [r["kept"] for r in a] == [False, True, False]  # the biggest copy wins
    assert rows["uA"]["nearest_similarity"] == pytest.approx(1.0, abs=1e-5)
    for u in ("uB", "uC", "uD", "uE0"):
        assert rows[u]["kept"] and rows[u]["cluster_size"] == 1
    assert stats["kept"] == 5 and stats["dropped_duplicates"] == 2 and stats["search"]["cells"] == 1
    from wit_builder.schemas import OUTPUTS
    assert set(OUTPUTS["dedup"].stats_keys) <= set(stats)
    # deterministic: shards listed in another order, fresh embeddings -> identical decisions. Via the
    # CLI, which hands unknown --options to Beam like every other stage.
    import pipelines.beam_options as P
    seen = []
    real = P.make_options

    def spy(beam_options):
        seen.append((beam_options.runner, beam_options.workers, *beam_options.args))
        return real(beam_options)

    monkeypatch.setattr(P, "make_options", spy)
    shard_list = [os.path.join(shards, f) for f in ("00002.tar", "00001.tar", "00000.tar")]
    assert wit_main(["dedup", "run", "--shards", *shard_list, "--detector", det, "--out", str(tmp_path / "out2"),
                     "--threads", "1", "--runner", "DirectRunner", "--job_name=wit-dedup-test"]) == 0
    # the embedding and the clustering pipelines all run with the user's options
    assert len(seen) >= 3 and set(seen) == {("DirectRunner", 1, ("--job_name=wit-dedup-test"))}
    t2 = pq.read_table(tmp_path / "out2" / "decisions.parquet")
    cols = ["uid", "key", "cluster_id", "cluster_size", "kept"]
    assert t2.select(cols).to_pylist() == t.select(cols).to_pylist()
    # a re-run reuses the per-shard embedding files
    before = {p: os.path.getmtime(p) for p in (tmp_path / "out" / "embeddings").iterdir()}
    run_dedup([shards], det, str(tmp_path / "out"), threads=1)
    assert {p: os.path.getmtime(p) for p in (tmp_path / "out" / "embeddings").iterdir()} == before
    # ... but not for a shard whose content changed under the same name (the cache is keyed by content)
    write_shard(os.path.join(shards, "00001.tar"), [
        {"key": "000010000", "image": imgs[0].resize((192, 160)), "uid": "uA_big"},
        {"key": "000010001", "image": _jpeg(imgs[0]), "width": 96, "height": 80, "uid": "uA_dup"},
        {"key": "000010002", "image": b"\xff\xd8\xff\xe0 now corrupt", "uid": "uD"}])
    stats = run_dedup([shards], det, str(tmp_path / "out"), threads=1)
    rows = {r["uid"]: r for r in pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()}
    assert rows["uD"]["status"] == "corrupt_image" and rows["uD"]["kept"] is False
    assert stats["skipped"]["corrupt_image"] == 2


def test_shard_records_count_missing_images(tmp_path):
    p = tmp_path / "x.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (("a.json", b"{}"), ("a.txt", b"cap"), ("b.jpg", b"xx"), ("b.json", b"not json")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    recs = list(iter_shard_records(str(p)))
    assert [(r["key"], r["error"]) for r in recs] == [("a", "no_image"), ("b", None)]
    assert recs[1]["meta"] is None and recs[1]["image"] == b"xx"


def test_overlap_vectors_hand_made():
    train = _unit([0, 60, 120])
    evals = _unit([60.5, 90, 1])
    r = overlap_vectors(train, evals, 0.99, train_side=True)
    assert r["eval_overlap"].tolist() == [True, False, True]
    assert r["eval_nearest"].tolist()[0::2] == [1, 0]
    assert r["train_overlap"].tolist() == [True, True, False]


def test_overlap_end_to_end(tmp_path, imgs):
    det = _detector(tmp_path / "det.pt")
    shards = _shards(tmp_path / "images", imgs)
    # eval set 1: a folder of files: a PNG copy of the training image D, and an unseen image
    ev = tmp_path / "evalset"
    (ev / "sub").mkdir(parents=True)
    imgs[3].save(ev / "sub" / "copy_of_d.png")
    synthetic_image(np.random.default_rng(999), (96, 80)).save(ev / "fresh.jpg")
    # eval set 2: shards holding a downscaled B and C
    write_shard(str(tmp_path / "ev2.tar"), [{"key": "e0", "image": imgs[1].resize((48, 40))},
                                            {"key": "e1", "image": imgs[2]}])
    run_dedup([shards], det, str(tmp_path / "dedup"), threads=1)
    out = tmp_path / "overlap"
    s = run_overlap([str(ev), f"second={tmp_path / 'ev2.tar'}"], [shards], det, str(out), drop_overlapping=True,
                    decisions=str(tmp_path / "dedup"), threads=1, threshold=0.98,
                    train_embeddings=str(tmp_path / "dedup" / "embeddings"))
    assert s["sets"]["evalset"]["overlap_fraction"] == 0.5
    assert s["sets"]["second"]["overlap_fraction"] == 1.0
    assert (out / "evalset.overlap.txt").read_text() == "sub/copy_of_d.png\n"
    assert (out / "evalset.clean.txt").read_text() == "fresh.jpg\n"
    assert sorted((out / "second.overlap.txt").read_text().split()) == ["e0", "e1"]
    d = {r["uid"]: r for r in pq.read_table(out / "decisions.parquet").to_pylist()}
    assert [u for u, r in d.items() if r["eval_overlap"]] == ["uB", "uC", "uD"]
    assert not d["uB"]["kept"] and not d["uD"]["kept"]
    assert d["uA_big"]["kept"] and not d["uA"]["kept"]  # combined with the dedup decisions
    assert d["uE0"]["kept"]
    rows = pq.read_table(out / "overlap.parquet").to_pylist()
    copy = [r for r in rows if r["id"] == "sub/copy_of_d.png"][0]
    assert copy["nearest_train_uid"] == "uD" and copy["max_similarity"] > 0.995
    fresh = [r for r in rows if r["id"] == "fresh.jpg"][0]
    assert fresh["overlap"] is False and fresh["max_similarity"] < 0.98


def test_cli_errors_are_one_line(tmp_path, capsys):
    # train/calibrate run no Beam pipeline: a stray option is an error, not a Beam option
    rc = wit_main(["dedup", "train", "--shards", str(tmp_path), "--out", str(tmp_path / "d.pt"), "--stpes", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown option --stpes (did you mean --steps?)" in err
    rc = wit_main(["dedup", "run", "--shards", str(tmp_path), "--detector", str(tmp_path / "none.pt"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no .tar shards" in err and "Traceback" not in err
    write_shard(str(tmp_path / "00000.tar"), [{"key": "k", "image": synthetic_image(0, (40, 40))}])
    rc = wit_main(["dedup", "run", "--shards", str(tmp_path), "--detector", str(tmp_path / "none.pt"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    det = _detector(tmp_path / "det.pt")
    state = torch.load(det, weights_only=True)
    state["threshold"] = None
    save_detector(det, state)
    with pytest.raises(WitError, match="not calibrated"):
        run_dedup([str(tmp_path)], det, str(tmp_path / "o"))


def test_two_truncated_shards_add_no_sample_and_shards_accepts_the_decisions(tmp_path, imgs):
    from download_testlib import fake_download_shard
    from pipelines import shards as shards_stage
    from wit_builder.shards import ShardsConfig
    images = tmp_path / "images"
    images.mkdir()
    for shard in range(2):
        fake_download_shard(str(images), shard, ["success"] * 3)
        raw = (images / f"{shard:05d}.tar").read_bytes()
        (images / f"{shard:05d}.tar").write_bytes(raw[:len(raw) // 3])  # cut inside a record
    det = _detector(tmp_path / "det.pt")
    stats = run_dedup([str(images)], det, str(tmp_path / "dd"), threads=1)
    assert stats["skipped"].get("truncated_shard") == 2
    keys = pq.read_table(tmp_path / "dd" / "decisions.parquet").column("key").to_pylist()
    assert "" not in keys and len(keys) == stats["images"]
    manifest = shards_stage.run(ShardsConfig(str(images), str(tmp_path / "s"), dedup=str(tmp_path / "dd")))
    assert manifest["totals"]["samples"] <= 6
