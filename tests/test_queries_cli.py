"""`wit queries` command line: --help, errors before the pipeline starts, and the pipeline graph
built with Dataflow options (not run)."""
import argparse
import os

import pytest

from pipelines.cli import queries as queries_cli
from wit_builder.sim import dumpgen
from wit_builder.sim.dumpgen import Page
from pipelines import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["queries", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    parser = argparse.ArgumentParser()
    queries_cli.add_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 20, action.option_strings
            assert action.option_strings[0] in out
    for phrase in ("multistream", "HH0000.gz", "(default: wordnet,unigram,bigram,title)", "(default: en,en.m)", "PMI overrates rare pairs", "en.m",
                   "DataflowRunner", "--setup_file", "(default: 100)", "(default: 500000)", "(default: no PMI threshold",
                   "(default: MetaCLIP's bigram part size, 100646)", "(default: MetaCLIP's title part size, 61235)"):
        assert phrase in out, phrase


@pytest.fixture
def no_pipeline(monkeypatch):
    from pipelines import queries as queries_pipeline

    def fail(*args, **kwargs):
        raise AssertionError("the pipeline must not start")
    monkeypatch.setattr(queries_pipeline, "run_candidates", fail)


def _err(capsys, argv):
    assert cli.main(["queries", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit queries: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_fail_before_the_pipeline(tmp_path, capsys, no_pipeline):
    out = str(tmp_path / "out")
    assert "matches no files" in _err(capsys, ["--dumps", str(tmp_path / "missing-*.xml.bz2"), "--out", out,
                                               "--parts", "unigram"])
    (tmp_path / "empty.xml.bz2").write_bytes(b"")
    assert "is empty (0 bytes)" in _err(capsys, ["--dumps", str(tmp_path / "empty.xml.bz2"), "--out", out,
                                                 "--parts", "unigram"])
    header_only, _ = dumpgen.write_dump([], str(tmp_path / "none.xml"))
    assert "holds no pages" in _err(capsys, ["--dumps", header_only, "--out", out, "--parts", "unigram"])
    ok, _ = dumpgen.write_dump([Page("A", "b")], str(tmp_path / "ok.xml.bz2"))
    assert "needs hourly pageview files" in _err(capsys, ["--dumps", ok, "--out", out])
    assert "pageview path" in _err(capsys, ["--dumps", ok, "--out", out, "--pageviews", str(tmp_path / "nope")])
    assert "--parts must name" in _err(capsys, ["--dumps", ok, "--out", out, "--parts", "unigram,trigram"])
    assert "--unigram-min-count must be at least 1" in _err(
        capsys, ["--dumps", ok, "--out", out, "--parts", "unigram", "--unigram-min-count", "0"])
    for bad in ("0", "-3", "many"):
        err = _err(capsys, ["--dumps", ok, "--out", out, "--parts", "bigram", "--bigram-count", bad])
        assert "--bigram-count" in err and "'all'" in err, err
    assert "--title-count" in _err(capsys, ["--dumps", ok, "--out", out, "--parts", "unigram", "--title-count", "0"])
    empty_index = tmp_path / "x-multistream-index.txt.bz2"
    empty_index.write_bytes(b"")
    dumpgen.write_dump([Page("A", "b")], str(tmp_path / "x-multistream.xml.bz2"), multistream=True,
                       index_path=str(tmp_path / "elsewhere-index.txt.bz2"))
    assert "index" in _err(capsys, ["--dumps", str(tmp_path / "x-multistream.xml.bz2"), "--out", out,
                                    "--parts", "unigram"])
    assert not os.path.exists(out)


def test_pipeline_graph_builds_for_dataflow():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    from pipelines import queries as qp
    from pipelines.beam_options import BeamOptions, make_options

    assert os.path.isfile(os.path.join(REPO, "setup.py"))
    options = make_options(BeamOptions("DataflowRunner", 1, (
        "--project", "my-project", "--region", "us-central1", "--temp_location", "gs://my-bucket/tmp",
        "--setup_file", "./setup.py", "--max_num_workers", "100")))
    p = beam.Pipeline(options=options)
    assert isinstance(p.runner, DataflowRunner)
    inputs = qp.Inputs(
        dumps=[("gs://my-bucket/enwiki-20240101-pages-articles-multistream.xml.bz2",
                "gs://my-bucket/enwiki-20240101-pages-articles-multistream-index.txt.bz2")],
        pageviews=["gs://my-bucket/pageviews/pageviews-20240101-000000.gz"], wordnet=[("dog", 7), ("0", 0)])
    _ = p | "Queries" >> qp.QueryCandidates(inputs, qp.QueryParams(), "gs://my-bucket/out/.wit-work")
    proto = p.to_runner_api()  # pickles every DoFn, as submission would
    assert PipelineOptionsValidator(options, p.runner).validate() == []
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("my-project", "us-central1", "gs://my-bucket/tmp")
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    by_name = {t.unique_name.rsplit("/", 1)[-1]: t for t in proto.components.transforms.values()}
    for step in ("PlanWorkUnits", "SpreadUnits", "ReadArticles", "CleanAndCount", "CountUnigrams", "CountBigrams",
                 "ScoreBigrams", "TopBigrams", "HourlyViews", "SumViews", "JoinTitles", "TopTitles", "WordNetPart",
                 "Merge", "WriteResults"):
        assert step in by_name, step
    # counting is a combine (lifted into per-bundle partial sums), not a GroupByKey of occurrences
    for step in ("CountUnigrams", "CountBigrams", "SumViews"):
        assert by_name[step].spec.urn == "beam:transform:combine_per_key:v1", step


def test_a_changed_input_is_not_taken_for_the_built_one(tmp_path):
    from queries.build import BuildConfig, QueryParams, _signature
    dump, _ = dumpgen.write_dump([Page("A", "b")], str(tmp_path / "a.xml"))
    cfg = BuildConfig(dumps=[dump], out=str(tmp_path / "out"))
    before = _signature(cfg, [(dump, None)], [])
    assert before == _signature(cfg, [(dump, None)], [])
    dumpgen.write_dump([Page("A", "b c")], dump)
    os.utime(dump, (1, 1))
    assert _signature(cfg, [(dump, None)], []) != before
    five = BuildConfig(dumps=[dump], out=str(tmp_path / "out"), params=QueryParams(unigram_min_count=5))
    assert _signature(five, [(dump, None)], []) != _signature(cfg, [(dump, None)], [])


def test_no_articles_is_an_error_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from pipelines import queries as queries_pipeline

    def only_redirects(inputs, params, work_dir, beam_options):  # what the pipeline reports for such a dump
        with open(os.path.join(work_dir, "result-00000-of-00001.jsonl"), "w") as fh:
            fh.write('["stat", ["page.read", 2]]\n["stat", ["page.redirect", 2]]\n')
    monkeypatch.setattr(queries_pipeline, "run_candidates", only_redirects)
    dump, _ = dumpgen.write_dump([Page("A", redirect="B"), Page("C", redirect="B")], str(tmp_path / "r.xml"))
    out = tmp_path / "out"
    assert "no articles" in _err(capsys, ["--dumps", dump, "--out", str(out), "--parts", "unigram"])
    assert not out.exists()


def test_a_finished_build_of_other_options_is_kept_unless_overwrite(tmp_path, capsys):
    """The run-folder rule every stage shares: same inputs and options -> nothing to do; other
    options -> an error naming --overwrite (the old build stays); --overwrite -> rebuilt."""
    dump, _ = dumpgen.write_dump([Page("A", "cat dog cat"), Page("B", "dog cat")], str(tmp_path / "d.xml"))
    out = str(tmp_path / "q")
    argv = ["queries", "--dumps", dump, "--out", out, "--parts", "unigram", "--unigram-min-count", "1"]
    assert cli.main(argv) == 0
    before = open(os.path.join(out, "queries.txt")).read()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "already built" in capsys.readouterr().out
    other = argv[:-1] + ["3"]
    assert cli.main(other) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert open(os.path.join(out, "queries.txt")).read() == before
    assert cli.main(other + ["--overwrite"]) == 0
    assert open(os.path.join(out, "queries.txt")).read() != before
