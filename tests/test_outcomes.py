"""A stage that finishes with nothing usable exits non-zero with one line; a stage that skips more
than --warn-skip-share of its input says so."""
import pytest

from collect_data import make_pages, write_queries
from download_testlib import write_balanced
from pipelines import cli
from wit_builder.sim.fixtures import write_shard
from wit_builder.sim.loopback import LoopbackServer
from wit_builder.sim.webgen import write_wat


def _collect(tmp_path, inputs, *extra):
    return cli.main(["collect", "--queries", str(tmp_path / "q.parquet"), "--input", *inputs,
                     "--out", str(tmp_path / "o"), "--langs", "all", *extra])


def _last_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if "apitools" not in line]
    return err


def test_collect_without_a_match_exits_non_zero(tmp_path, capsys):
    write_queries(tmp_path / "q.parquet", ["zebra crossing", "xylophone"])
    write_wat(make_pages(5), str(tmp_path / "in" / "x.wat.gz"))
    assert _collect(tmp_path, [str(tmp_path / "in")]) == 2
    err = _last_line(capsys)
    assert len(err) == 1 and "nothing usable came out: 0 pairs matched" in err[0] and "no_match 25" in err[0]


def test_collect_of_only_empty_or_garbage_files_exits_non_zero_and_warns(tmp_path, capsys):
    write_queries(tmp_path / "q.parquet")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.warc.wat.gz").write_bytes(b"")
    (tmp_path / "in" / "junk.warc.wat.gz").write_bytes(b"this is not a WAT file\n" * 20)
    assert _collect(tmp_path, [str(tmp_path / "in")]) == 2
    err = _last_line(capsys)
    assert any("warning:" in line and "--warn-skip-share" in line and "empty_file 1" in line for line in err), err
    assert "0 pairs matched" in err[-1] and "2 files" in err[-1]


def test_collect_warns_above_the_skip_share_only(tmp_path, capsys):
    write_queries(tmp_path / "q.parquet")
    write_wat(make_pages(20), str(tmp_path / "in" / "a.warc.wat.gz"))
    (tmp_path / "in" / "empty.warc.wat.gz").write_bytes(b"")
    assert _collect(tmp_path, [str(tmp_path / "in")], "--warn-skip-share", "0.5") == 0
    assert "warning" not in capsys.readouterr().err
    assert _collect(tmp_path, [str(tmp_path / "in")], "--warn-skip-share", "0", "--overwrite") == 0
    assert "warning: 1 of" in capsys.readouterr().err


def test_download_with_no_image_fetched_exits_non_zero(tmp_path, capsys):
    with LoopbackServer({f"/{i}.jpg": {"status": 404} for i in range(4)}) as srv:
        pairs = tmp_path / "balanced"
        pairs.mkdir()
        write_balanced(str(pairs / "part-00000-of-00001.parquet"),
                       [f"http://img.test:{srv.port}/{i}.jpg" for i in range(4)])
        code = cli.main(["download", "--pairs", str(pairs), "--out", str(tmp_path / "img"), "--processes", "1",
                         "--threads", "2", "--timeout", "2", "--resolve", "img.test=127.0.0.1",
                         "--allowed-endpoint", f"127.0.0.1:{srv.port}"])
    err = _last_line(capsys)
    assert code == 2
    assert "warning: 4 of 4 images skipped" in "\n".join(err)
    assert "nothing usable came out: 0 of 4 images downloaded (failed: http_404 4)" in err[-1]


def test_dedup_with_every_image_undecodable_exits_non_zero(tmp_path, capsys):
    from test_dedup_cluster import _detector
    write_shard(str(tmp_path / "img" / "00000.tar"), [{"key": f"00000000{i}", "image": b"\xff\xd8 not a jpeg"}
                                                      for i in range(3)])
    det = _detector(tmp_path / "det.pt")
    code = cli.main(["dedup", "run", "--shards", str(tmp_path / "img"), "--detector", det,
                     "--out", str(tmp_path / "dd")])
    err = _last_line(capsys)
    assert code == 2
    assert "nothing usable came out: none of 3 images could be decoded" in err[-1]


@pytest.mark.parametrize("value", ["1.5", "x"])
def test_the_skip_share_is_checked(tmp_path, value, capsys):
    with pytest.raises(SystemExit):
        _collect(tmp_path, [str(tmp_path)], "--warn-skip-share", value)
    assert "--warn-skip-share" in capsys.readouterr().err
