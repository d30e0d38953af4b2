"""Collect inputs that hold nothing or lose rows silently (issue 13): empty files of every format are
counted as ``skipped.empty_file``; a CSV quote that is never closed loses the rest of the file, which
is counted (``skipped.unterminated_quote_rows``) and named in a warning instead of becoming one caption."""
import gzip
import io
import json
import logging
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collect_data import make_pages, write_queries
from pipelines import cli
from wit_builder.sim.webgen import write_wat
from wit_builder.sources import SourceOptions, check_table_columns, detect_format, iter_candidates

EMPTY = {
    "a.wat": b"",
    "a.warc.gz": b"",
    "nothing.warc.wat.gz": gzip.compress(b""),      # compressed, holding nothing
    "t.parquet": b"",
    "t.csv": b"",
    "nothing.csv.gz": gzip.compress(b""),
    "t.tsv": b"",
    "t.jsonl": b"",
}


def _candidates(path, opts=SourceOptions()):
    stats = Counter()
    out = list(iter_candidates(str(path), detect_format(str(path)), opts, stats))
    return out, stats


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_files_are_counted(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(EMPTY[name])
    fmt = detect_format(str(path))
    if fmt not in ("wat", "warc"):
        check_table_columns(str(path), fmt, SourceOptions())     # no error: counted when read
    pairs, stats = _candidates(path)
    assert pairs == [] and stats["skipped.empty_file"] == 1
    assert {k for k in stats if k.startswith("skipped.")} == {"skipped.empty_file"}


def test_a_damaged_file_is_not_called_empty(tmp_path):
    (tmp_path / "junk.wat").write_bytes(b"this is not a WARC file at all\r\n\r\n" * 4)
    _, stats = _candidates(tmp_path / "junk.wat")
    assert stats["skipped.empty_file"] == 0 and stats["skipped.malformed_record"] >= 1


def _csv(rows):
    return ("url,caption\n" + "".join(r + "\n" for r in rows)).encode()


def test_unterminated_quote_in_the_caption(tmp_path, caplog):
    rows = [f"https://a.org/{i}.jpg,caption {i}" for i in range(5)]
    rows += ['https://a.org/bad.jpg,"an unterminated, caption']
    rows += [f"https://a.org/{i}.jpg,after {i}" for i in range(5, 9)]
    path = tmp_path / "t.csv"
    path.write_bytes(_csv(rows))
    with caplog.at_level(logging.WARNING, logger="wit_builder.sources"):
        pairs, stats = _candidates(path)
    # before: the bad row was yielded with the four rows after it as its caption, and nothing counted
    assert pairs == [(f"https://a.org/{i}.jpg", f"caption {i}", None) for i in range(5)]
    assert stats["skipped.unterminated_quote_rows"] == 5 and stats["skipped.bad_table_row"] == 0
    assert stats["records_read"] == 5
    msgs = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(msgs) == 1 and "line 7" in msgs[0] and "5 rows" in msgs[0]

    with gzip.open(tmp_path / "t.csv.gz", "wb") as fh:      # the same behind gzip, no final newline
        fh.write(_csv(rows)[:-1])
    pairs2, stats2 = _candidates(tmp_path / "t.csv.gz")
    assert pairs2 == pairs and stats2["skipped.unterminated_quote_rows"] == 5


def test_unterminated_quote_in_the_first_column(tmp_path):
    # the row ends up with too few fields: pyarrow's bad-row handler sees it; counted once, as lost
    rows = ["https://a.org/1.jpg,one", '"https://a.org/2.jpg,two', "https://a.org/3.jpg,three"]
    (tmp_path / "t.csv").write_bytes(_csv(rows))
    pairs, stats = _candidates(tmp_path / "t.csv")
    assert pairs == [("https://a.org/1.jpg", "one", None)]
    assert stats["skipped.unterminated_quote_rows"] == 2 and stats["skipped.bad_table_row"] == 0


def test_closed_quotes_are_read_as_before(tmp_path):
    rows = ['https://a.org/1.jpg,"a ""quoted"" word"', 'https://a.org/2.jpg,"two\nlines"',
            'https://a.org/3.jpg,5" tall', 'https://a.org/4.jpg,"x"y', 'https://a.org/5.jpg, "spaced"',
            'https://a.org/6.jpg,"ends with a quote"""']
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv(rows))
    pairs, stats = _candidates(path)
    assert [t for _, t, _ in pairs] == ['a "quoted" word', "two\nlines", '5" tall', "xy", ' "spaced"',
                                        'ends with a quote"']
    assert not any(k.startswith("skipped.") for k in stats)


def _reference(data: bytes, delim: int = 44):
    """The quoting rules, one byte at a time: (unterminated, open line, open field, lost rows)."""
    state, col, line, i = "start", 0, 1, 0
    open_line = open_col = quoted_nl = 0
    if data.startswith(b"\xef\xbb\xbf"):
        i = 3
    while i < len(data):
        c = data[i]
        if state == "quoted":
            if c == 34:
                if i + 1 < len(data) and data[i + 1] == 34:
                    i += 1
                else:
                    state = "plain"
            elif c == 10:
                quoted_nl += 1
                line += 1
        elif state == "start" and c == 34:
            state, open_line, open_col, quoted_nl = "quoted", line, col, 0
        elif c == delim:
            col, state = col + 1, "start"
        elif c in (10, 13):
            col, state, line = 0, "start", line + (c == 10)
        else:
            state = "plain"
        i += 1
    if state != "quoted":
        return False, None, None, None
    return True, open_line, open_col, 1 + quoted_nl - data.endswith(b"\n")


def test_quote_watch_matches_a_byte_by_byte_reference():
    from wit_builder.sources import _QuoteWatch
    rng = random.Random(7)
    alphabet = [b"a", b"b", b",", b'"', b'"', b"\n", b"\r\n", b" ", b"\xef"]
    for trial in range(1500):
        data = (b"\xef\xbb\xbf" if trial % 10 == 0 else b"") + b"".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        stream = io.BytesIO(data)
        watch = _QuoteWatch(stream)
        while watch.read(rng.randint(1, 6)):
            pass
        want = _reference(data)
        got = (watch.unterminated,) + ((watch.open_line, watch.open_col, watch.lost_rows)
                                       if watch.unterminated else (None, None, None))
        assert got == want, data


def test_quote_watch_agrees_with_pyarrow():
    """pyarrow itself as the judge: a row appended after the data is read as a row of its own
    exactly when the data does not end inside a quote; and the row that opened an unclosed quote
    goes to the bad-row handler exactly when the watch says its field count is wrong."""
    import pyarrow.csv as pacsv
    from wit_builder.sources import _QuoteWatch
    rng = random.Random(3)
    alphabet = [b"a", b"b", b",", b'"', b'"', b'""', b"\n", b"\r\n", b" "]
    unterminated = 0
    for _ in range(800):
        data = b"h1,h2\n" + b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        watch = _QuoteWatch(io.BytesIO(data))
        while watch.read(rng.randint(1, 9)):
            pass
        bad = []
        parse = pacsv.ParseOptions(newlines_in_values=True,
                                   invalid_row_handler=lambda row: bad.append(row.text) or "skip")
        convert = pacsv.ConvertOptions(column_types={"h1": pa.string(), "h2": pa.string()}, strings_can_be_null=False)
        rows = pacsv.read_csv(io.BytesIO(data + b"\nXX,YY\n"), parse_options=parse, convert_options=convert).to_pylist()
        assert (rows[-1:] == [{"h1": "XX", "h2": "YY"}]) != watch.unterminated, data
        if watch.unterminated:
            unterminated += 1
            assert (bool(bad) and bad[-1].endswith("XX,YY")) == (watch.open_col != 1), data
    assert 100 < unterminated < 700


def test_collect_counts_empty_files_and_lost_rows(tmp_path):
    """End to end: stats.json's ``skipped`` has both reasons; the good inputs are collected."""
    write_queries(tmp_path / "queries.parquet")
    inp = tmp_path / "in"
    write_wat(make_pages(20), str(inp / "CC-a.warc.wat.gz"))
    (inp / "CC-empty.warc.wat.gz").write_bytes(b"")
    (inp / "table.csv").write_bytes(_csv(['https://t.example/1.jpg,a red car in New York',
                                          'https://t.example/2.jpg,"a cat on the beach',
                                          'https://t.example/3.jpg,a dog in the garden']))
    out = tmp_path / "out"
    assert cli.main(["collect", "--queries", str(tmp_path / "queries.parquet"), "--input", str(inp),
                     "--out", str(out), "--runner", "DirectRunner"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["empty_file"] == 1
    assert stats["skipped"]["unterminated_quote_rows"] == 2
    assert stats["matched"] > 0
    texts = set(pq.read_table(out / "matched").column("text").to_pylist())
    assert "a red car in New York" in texts and not any("t.example/3.jpg" in t for t in texts)


def test_parquet_table_still_read(tmp_path):
    pq.write_table(pa.table({"url": ["https://a.org/1.jpg"], "caption": ["one"]}), str(tmp_path / "t.parquet"))
    assert _candidates(tmp_path / "t.parquet")[0] == [("https://a.org/1.jpg", "one", None)]
