"""The demo report, built from small hand-made stage outputs that follow docs/schemas.md."""
import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wit_builder.sim import report as R
from wit_builder.core import WitError
from wit_builder.sim.render import render, sample_scene

QUERIES = ["red", "circle", "heart", "red heart", "Triangle", "star", "blue", "mug"]
SOURCES = [["wordnet", "unigram"], ["wordnet", "unigram"], ["unigram"], ["bigram"], ["title"],
           ["wordnet", "unigram"], ["unigram"], ["wordnet"]]
CAP = 5


def _uid(url, text):
    return hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()[:32]


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tar(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def make_fixtures(root) -> dict:
    """Minimal outputs of every stage, in the contract's file names, columns and types."""
    root = str(root)
    d = {k: os.path.join(root, k.upper()) for k in ("q", "out", "images", "dedup", "shards", "run")}
    for p in d.values():
        os.makedirs(p)
    # wit queries
    n = len(QUERIES)
    pq.write_table(pa.table({
        "id": pa.array(range(n), pa.int32()), "query": QUERIES,
        "sources": pa.array(SOURCES, pa.list_(pa.string())),
        "unigram_count": pa.array([150, 120, 110, None, None, 90, 140, None], pa.int64()),
        "bigram_count": pa.array([None, None, None, 40, None, None, None, None], pa.int64()),
        "bigram_pmi": pa.array([None, None, None, 5.2, None, None, None, None], pa.float64()),
        "title_views": pa.array([None, None, None, None, 900, None, None, None], pa.int64()),
        "wordnet_synsets": pa.array([3, 2, None, None, None, 4, None, 1], pa.int32()),
    }), os.path.join(d["q"], "queries.parquet"))
    with open(os.path.join(d["q"], "queries.txt"), "w") as fh:
        fh.write("\n".join(QUERIES) + "\n")
    json.dump({"thresholds": {"unigram_min_count": 8, "bigram_min_count": 5}},
              open(os.path.join(d["q"], "stats.json"), "w"))
    # wit collect: 40 red hearts (the head), a few of everything else
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        rows.append(("a red heart on a wooden table", [0, 2, 3]))
    for i in range(4):
        rows.append(("a blue star icon", [5, 6]))
        rows.append(("red circle clip art", [0, 1]))
    rows.append(("a star painted on a mug", [5, 7]))
    matched = {"uid": [], "url": [], "text": [], "page_url": [], "source": [], "lang": [],
               "lang_prob": [], "query_ids": []}
    for i, (text, qids) in enumerate(rows):
        url = f"http://shapes.example/images/{i}.jpg"
        for k, v in (("uid", _uid(url, text)), ("url", url), ("text", text),
                     ("page_url", "http://shapes.example/gallery/1.html"), ("source", "x.warc.wat.gz"),
                     ("lang", "en"), ("lang_prob", 0.9), ("query_ids", sorted(qids))):
            matched[k].append(v)
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("page_url", pa.string()), ("source", pa.string()), ("lang", pa.string()),
                        ("lang_prob", pa.float32()), ("query_ids", pa.list_(pa.int32()))])
    mt = pa.table(matched, schema=schema)
    os.makedirs(os.path.join(d["out"], "matched"))
    pq.write_table(mt, os.path.join(d["out"], "matched", "part-00000-of-00001.parquet"))
    counts = {}
    for qids in matched["query_ids"]:
        for q in qids:
            counts[q] = counts.get(q, 0) + 1
    pq.write_table(pa.table({
        "query_id": pa.array(sorted(counts), pa.int32()),
        "query": [QUERIES[q] for q in sorted(counts)],
        "count": pa.array([counts[q] for q in sorted(counts)], pa.int64()),
        "keep_prob": pa.array([min(1.0, CAP / counts[q]) for q in sorted(counts)], pa.float64())}),
        os.path.join(d["out"], "counts.parquet"))
    keep = [i for i, qids in enumerate(matched["query_ids"])
            if any(rng.random() < min(1.0, CAP / counts[q]) for q in qids)]
    bt = mt.take(keep).append_column("keep_prob", pa.array([0.5] * len(keep), pa.float64()))
    os.makedirs(os.path.join(d["out"], "balanced"))
    pq.write_table(bt, os.path.join(d["out"], "balanced", "part-00000-of-00001.parquet"))
    json.dump({"records_read": 100, "matched": len(rows), "kept": len(keep), "per_query_cap": CAP},
              open(os.path.join(d["out"], "stats.json"), "w"))
    # wit download: one shard; two near-duplicate groups, one failed download
    base = [render(sample_scene(s)) for s in (1, 2, 3)]
    pictures = [base[0], base[0].resize((100, 100)), base[1], base[1].crop((5, 5, 120, 120)), base[2]]
    samples, rows_dl = [], []
    for r, pic in enumerate(pictures + [None]):
        key = f"00000{r:04d}"
        text = bt.column("text")[r].as_py()
        meta = {"key": key, "url": bt.column("url")[r].as_py(), "caption": text,
                "status": "success" if pic is not None else "failed_to_download",
                "error_message": None if pic is not None else "HTTP Error 404: Not Found",
                "error_kind": None if pic is not None else "http_404",
                "width": pic.width if pic else None, "height": pic.height if pic else None,
                "original_width": pic.width if pic else None, "original_height": pic.height if pic else None,
                "sha256": hashlib.sha256(_jpeg(pic)).hexdigest() if pic else None,
                "uid": bt.column("uid")[r].as_py(), "query_ids": bt.column("query_ids")[r].as_py(),
                "page_url": bt.column("page_url")[r].as_py()}
        rows_dl.append(meta)
        if pic is not None:
            samples.append((key, {"jpg": _jpeg(pic), "txt": text.encode(), "json": json.dumps(meta).encode()}))
    _tar(os.path.join(d["images"], "00000.tar"), samples)
    pq.write_table(pa.Table.from_pylist(rows_dl), os.path.join(d["images"], "00000.parquet"))
    json.dump({"count": len(rows_dl), "successes": 5}, open(os.path.join(d["images"], "00000_stats.json"), "w"))
    os.makedirs(os.path.join(d["images"], "_wit"))
    json.dump({"status": {"success": 5, "failed_to_download": 1}},
              open(os.path.join(d["images"], "_wit", "summary.json"), "w"))
    # wit dedup run
    shard = os.path.join(d["images"], "00000.tar")
    pq.write_table(pa.table({
        "uid": [m["uid"] for m in rows_dl[:5]], "key": [m["key"] for m in rows_dl[:5]],
        "shard": [shard] * 5, "cluster_id": pa.array([0, 0, 2, 2, 4], pa.int64()),
        "cluster_size": pa.array([2, 2, 2, 2, 1], pa.int32()),
        "kept": [True, False, True, False, True],
        "nearest_similarity": pa.array([0.97, 0.97, 0.93, 0.93, 0.41], pa.float32()),
        "nearest_key": [rows_dl[1]["key"], rows_dl[0]["key"], rows_dl[3]["key"], rows_dl[2]["key"], rows_dl[0]["key"]],
        "width": pa.array([p.width for p in pictures], pa.int32()),
        "height": pa.array([p.height for p in pictures], pa.int32()),
        "status": ["ok"] * 5}), os.path.join(d["dedup"], "decisions.parquet"))
    # wit shards
    kept = [0, 2, 4]
    _tar(os.path.join(d["shards"], "00000.tar"), [samples[i] for i in kept])
    pq.write_table(pa.Table.from_pylist([{**rows_dl[i], "cluster_id": i, "cluster_size": 2} for i in kept]),
                   os.path.join(d["shards"], "00000.parquet"))
    json.dump({"00000.tar": 3}, open(os.path.join(d["shards"], "sizes.json"), "w"))
    json.dump({"shards": [{"name": "00000.tar", "samples": 3}], "totals": {"shards": 1, "samples": 3}},
              open(os.path.join(d["shards"], "manifest.json"), "w"))
    # wit train
    with open(os.path.join(d["run"], "log.jsonl"), "w") as fh:
        for step in range(0, 50, 5):
            fh.write(json.dumps({"type": "train", "step": step, "epoch": 1, "loss": 4.0 - step / 25,
                                 "lr": 1e-3 * min(1, step / 10), "logit_scale": 14.3 + step / 10,
                                 "samples_per_s": 120.0, "skipped": {}}) + "\n")
            if step % 25 == 20:  # wit train nests evaluation metrics per kind
                fh.write(json.dumps({"type": "eval", "step": step, "epoch": 1, "zeroshot": {
                    "top1": 0.2 + step / 100, "top5": 0.9, "num_images": 400, "num_classes": 8,
                    "skipped": {}}}) + "\n")
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    d = make_fixtures(root)
    labels = [i % 4 for i in range(40)]
    preds = [l if i % 5 else (l + 1) % 4 for i, l in enumerate(labels)]
    zs = {"shapes": {"classes": ["circle", "square", "triangle", "star"], "labels": labels,
                     "predictions": preds}}
    summary = {"queries": {"in": 212, "out": 8, "dropped": {}, "seconds": 3.2},
               "collect": {"in": 3649, "out": 47, "dropped": {"no_match": 90, "lang": 150}, "seconds": 9.5}}
    stages = {"queries": d["q"], "collect": d["out"], "download": d["images"], "dedup": d["dedup"],
              "shards": d["shards"], "train": d["run"]}
    md, html = R.build_report(str(root), stages, summary=summary, zeroshot=zs)
    return root, d, md, html, labels, preds


def test_report_files_and_sections(built):
    root, d, md, html, _, _ = built
    text = open(md, encoding="utf-8").read()
    for title in ("Stages", "Query list", "Matching and balancing", "Download",
                  "Near-duplicate clusters", "Shards", "Training", "Zero-shot evaluation", "Artifacts"):
        assert f"## {title}" in text
    assert "not found" not in text
    figures = re.findall(r"!\[[^\]]*\]\(report_files/([^)]+)\)", text)
    assert set(figures) == {"queries.png", "balance.png", "duplicates.png", "training.png",
                            "confusion_shapes.png"}
    for f in figures:
        with Image.open(os.path.join(root, "report_files", f)) as im:
            assert im.format == "PNG" and im.width > 200
    page = open(html, encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == len(figures)
    assert "report_files" not in page  # self-contained
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with ``| header |``."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_balancing_table_counts_before_and_after(built):
    _, d, md, _, _, _ = built
    text = open(md, encoding="utf-8").read()
    rows = {r[0]: r for r in _table_rows(text, "query")}
    balanced = pq.read_table(os.path.join(d["out"], "balanced")).column("query_ids").to_pylist()
    after_red_heart = sum(3 in ids for ids in balanced)
    assert rows["red heart"][1] == "40" and rows["red heart"][2] == str(after_red_heart)
    assert after_red_heart < 40  # the head query was capped
    assert float(rows["red heart"][3]) == pytest.approx(CAP / 40)
    assert rows["mug"][1] == "1" and rows["mug"][2] == "1"  # tail query: always kept
    assert "per-query cap of 5" in text


def test_duplicate_strip_marks_kept_and_dropped(built):
    root, d, md, _, _, _ = built
    text = open(md, encoding="utf-8").read()
    rows = _table_rows(text, "cluster")
    assert [(r[0], r[2]) for r in rows] == [("0", "kept"), ("0", "dropped"), ("2", "kept"), ("2", "dropped")]
    assert rows[0][4] == "a red heart on a wooden table"  # caption read from the image shard
    strip = np.asarray(Image.open(os.path.join(root, "report_files", "duplicates.png")).convert("RGB"))
    thumb = 96
    assert strip.shape[:2] == (2 * thumb, 2 * thumb + 150)  # 2 clusters of 2
    corner = lambda r, j: tuple(strip[r * thumb + 1, 150 + j * thumb + 1])  # noqa: E731
    assert corner(0, 0) == (46, 160, 67) and corner(0, 1) == (210, 50, 50)
    assert corner(1, 0) == (46, 160, 67) and corner(1, 1) == (210, 50, 50)
    # the thumbnails are the pictures, not placeholders: the first tile shows scene 1 shrunk
    tile = Image.fromarray(strip[4:thumb - 4, 154:150 + thumb - 4])
    ref = render(sample_scene(1))
    ref.thumbnail((thumb - 8, thumb - 8))
    ox, oy = (thumb - 8 - ref.width) // 2, (thumb - 8 - ref.height) // 2
    got = np.asarray(tile, np.float32)[oy:oy + ref.height, ox:ox + ref.width]
    assert np.abs(got - np.asarray(ref, np.float32)).mean() < 12


def test_zero_shot_accuracy_and_confusion(built):
    _, _, md, _, labels, preds = built
    text = open(md, encoding="utf-8").read()
    row = _table_rows(text, "set")[0]
    acc = np.mean(np.array(labels) == np.array(preds))
    assert row[:5] == ["shapes", "4", "40", f"{100 * acc:.1f}%", "25.0%"]
    m = R.confusion_matrix(labels, preds, 4)
    assert m.sum() == 40 and np.trace(m) == int(acc * 40) and m[0, 1] == 2


def test_artifact_table_lists_every_file_with_its_schema(built):
    root, d, md, _, _, _ = built
    text = open(md, encoding="utf-8").read()
    rows = _table_rows(text, "stage | path")
    paths = {r[1].strip("`"): r for r in rows}
    expected = {"Q/queries.parquet", "Q/queries.txt", "Q/stats.json", "OUT/counts.parquet",
                "OUT/matched/part-NNNNN-of-NNNNN.parquet", "OUT/balanced/part-NNNNN-of-NNNNN.parquet",
                "OUT/stats.json", "IMAGES/NNNNN.tar", "IMAGES/NNNNN.parquet", "IMAGES/NNNNN_stats.json",
                "IMAGES/_wit/summary.json", "DEDUP/decisions.parquet", "SHARDS/NNNNN.tar",
                "SHARDS/NNNNN.parquet", "SHARDS/sizes.json", "SHARDS/manifest.json", "RUN/log.jsonl"}
    assert expected <= set(paths)
    assert "query_ids: list<element: int32>" in paths["OUT/matched/part-NNNNN-of-NNNNN.parquet"][4]
    assert "cluster_id: int64" in paths["DEDUP/decisions.parquet"][4]
    assert paths["IMAGES/NNNNN.tar"][4] == "WebDataset tar: 5 samples (.jpg, .json, .txt)"
    assert paths["SHARDS/NNNNN.tar"][4].startswith("WebDataset tar: 3 samples")
    assert paths["RUN/log.jsonl"][4].startswith("JSON lines: type, step, epoch, loss, lr")
    assert int(paths["Q/queries.parquet"][3].replace(",", "")) == os.path.getsize(
        os.path.join(d["q"], "queries.parquet"))


def test_missing_stages_are_noted_not_fatal(tmp_path):
    md, html = R.build_report(str(tmp_path), {})
    text = open(md, encoding="utf-8").read()
    assert text.count("not found") >= 5 and "no zero-shot results" in text
    assert os.path.exists(html)
    with pytest.raises(WitError):
        R.build_report(str(tmp_path), {"colect": str(tmp_path)})


def test_zero_shot_results_from_a_file(tmp_path):
    m = [[3, 1], [0, 4]]
    (tmp_path / "EVAL").mkdir()
    json.dump({"colours": {"classes": ["red", "blue"], "confusion": m}},
              open(tmp_path / "EVAL" / "zeroshot.json", "w"))
    md, _ = R.build_report(str(tmp_path), {"eval": str(tmp_path / "EVAL")})
    row = _table_rows(open(md).read(), "set")[0]
    assert row[:5] == ["colours", "2", "8", "87.5%", "50.0%"]
    json.dump({"colours": {"classes": ["red", "blue"], "confusion": [[1]]}},
              open(tmp_path / "EVAL" / "zeroshot.json", "w"))
    with pytest.raises(WitError):
        R.build_report(str(tmp_path), {"eval": str(tmp_path / "EVAL")})


def test_training_section_plots_nested_eval_metrics(built):
    root, d, md, html, labels, preds = built
    section = R.training_section(d["run"])
    assert R._flatten({"step": 3, "zeroshot": {"top1": 0.5, "skipped": {"bad": 1}}}) == {
        "step": 3, "zeroshot.top1": 0.5, "zeroshot.skipped.bad": 1}
    figures = [b for b in section.blocks if b[0] == "figure"]
    assert figures and figures[0][1] == "training.png"
    # 5 panels: loss, lr, logit_scale, samples_per_s and the evaluation (top-1, top-5)
    from PIL import Image
    with Image.open(io.BytesIO(figures[0][2])) as im:
        assert im.width > 4.5 * 3.6 * 100  # 100 dpi: five panels, not four
