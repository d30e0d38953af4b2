"""`--queries` of `wit collect` / `wit balance` reads MetaCLIP's released metadata.json (a JSON list
of strings, id = position); a JSON file of another shape and a list without queries are one-line
errors (wit_builder.collect.load_queries)."""
import json

import pyarrow.parquet as pq
import pytest

from pipelines import cli
from wit_builder.collect import load_queries
from wit_builder.core import WitError

QUERIES = ["cat", "red car", "New York", "Zürich", "C++", "[draft]"]


def test_metadata_json_is_a_list_of_queries(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(QUERIES, ensure_ascii=True))  # MetaCLIP's file escapes non-ASCII
    assert load_queries(str(path)) == QUERIES
    txt = tmp_path / "queries.txt"
    txt.write_text("".join(q + "\n" for q in QUERIES), encoding="utf-8")
    assert load_queries(str(txt)) == QUERIES  # the same list as the text form


@pytest.mark.parametrize("content, phrase", [
    ('{"queries": ["cat"]}', "must be a list of strings (like MetaCLIP's metadata.json), got a JSON object"),
    ('"cat"', "got a JSON string"),
    ('["cat", 3]', "item 1 is a JSON number"),
    ('["cat", ["dog"]]', "item 1 is a JSON array"),
    ('["cat", null]', "item 1 is a JSON null"),
    ('["cat", "dog"', "not valid JSON"),
    ("", "not valid JSON"),
    ("[]", "no queries"),
    ('["cat", ""]', "query 1 is empty"),
])
def test_bad_json_query_lists_are_one_line_errors(tmp_path, content, phrase):
    path = tmp_path / "metadata.json"
    path.write_text(content)
    with pytest.raises(WitError) as exc:
        load_queries(str(path))
    msg = str(exc.value)
    assert phrase in msg and str(path) in msg and "\n" not in msg


def test_an_empty_text_list_is_an_error(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("")
    with pytest.raises(WitError, match="no queries"):
        load_queries(str(path))


def _table(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "table.csv").write_text(
        "url,caption\n"
        "https://t.example/1.jpg,a red car parked in New York\n"
        "https://t.example/2.jpg,a cat sleeping on the sofa\n"
        "https://t.example/3.jpg,a dog running in the garden\n", encoding="utf-8")
    return inp


def test_collect_matches_with_metaclips_metadata_json(tmp_path, capsys):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(QUERIES))
    out = tmp_path / "out"
    assert cli.main(["collect", "--queries", str(path), "--input", str(_table(tmp_path)), "--out", str(out),
                     "--runner", "DirectRunner"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["queries"]["count"] == len(QUERIES)
    matched = pq.read_table(out / "matched").to_pylist()
    texts = {r["text"] for r in matched}
    assert texts == {"a red car parked in New York", "a cat sleeping on the sofa"}
    assert stats["queries_matched"] == 3  # red car, New York, cat
    ids = {r["text"]: sorted(r["query_ids"]) for r in matched}
    assert ids == {"a red car parked in New York": [1, 2], "a cat sleeping on the sofa": [0]}  # id = position
    # wit balance names the queries from the same file
    again = tmp_path / "again"
    assert cli.main(["balance", "--matched", str(out), "--queries", str(path), "--per-query-cap", "5",
                     "--out", str(again), "--runner", "DirectRunner"]) == 0
    counts = pq.read_table(again / "counts.parquet").to_pylist()
    assert {r["query_id"]: r["query"] for r in counts} == {0: "cat", 1: "red car", 2: "New York"}


def test_collect_with_an_empty_query_list_fails(tmp_path, capsys):
    path = tmp_path / "metadata.json"
    path.write_text("[]")
    out = tmp_path / "out"
    assert cli.main(["collect", "--queries", str(path), "--input", str(_table(tmp_path)), "--out", str(out),
                     "--runner", "DirectRunner"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit collect: error: ") and "no queries" in err and "\n" not in err
