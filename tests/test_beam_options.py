"""Options a Beam stage does not know are refused, never dropped (Beam itself only logs
"Discarding unparseable args" and runs with its defaults)."""
import pytest

from pipelines import cli
from pipelines.beam_options import BeamOptions, check_beam_args, check_runner, make_options
from wit_builder.core import WitError


def _balance(tmp_path, *extra):
    return cli.main(["balance", "--matched", str(tmp_path / "none"), "--per-query-cap", "3",
                     "--out", str(tmp_path / "out"), *extra])


def test_a_mistyped_stage_option_is_refused_with_the_closest_name(tmp_path, capsys):
    assert _balance(tmp_path, "--per_query_cap", "5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "unknown option --per_query_cap" in err[0] and "did you mean --per-query-cap?" in err[0]


def test_a_mistyped_beam_option_names_beams_option(tmp_path, capsys):
    assert _balance(tmp_path, "--temp_locaton=gs://b/tmp") == 2
    assert "did you mean --temp_location?" in capsys.readouterr().err


def test_dedup_subcommand_options_are_among_the_suggestions(tmp_path, capsys):
    code = cli.main(["dedup", "run", "--shards", str(tmp_path / "x.tar"), "--detector", "d.pt",
                     "--out", str(tmp_path / "o"), "--exact_below", "10"])
    assert code == 2
    assert "did you mean --exact-below?" in capsys.readouterr().err


def test_a_misspelt_runner_is_one_line_without_traceback(tmp_path, capsys):
    assert _balance(tmp_path, "--runner", "DirectRuner") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown runner 'DirectRuner'" in err[0] and "DirectRunner?" in err[0]


def test_real_beam_options_pass():
    check_beam_args(["--project", "p", "--region=europe-west1", "--temp_location", "gs://b/t",
                     "--max_num_workers=100", "--experiments=use_runner_v2", "--save_main_session"])
    for runner in ("DirectRunner", "DataflowRunner", "dataflow", "FlinkRunner", "my.module.Runner"):
        check_runner(runner)
    with pytest.raises(WitError, match="unexpected argument 'stray'"):
        check_beam_args(["--project", "p", "stray"])


def test_the_users_beam_options_win_over_ours():
    from apache_beam.options.pipeline_options import DirectOptions
    opts = make_options(BeamOptions(workers=1, args=("--direct_num_workers=3",)))
    assert opts.view_as(DirectOptions).direct_num_workers == 3
    opts = make_options(BeamOptions(workers=2))
    assert opts.view_as(DirectOptions).direct_num_workers == 2
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"


def test_several_local_workers_in_one_process_are_refused_and_run_as_processes_by_default():
    # Beam 2.78's DirectRunner lost 201 of 1,080,588 rows before a GroupByKey of the dedup search
    # with two workers in multi_threading mode (other runs: other counts); multi_processing never did
    from apache_beam.options.pipeline_options import DirectOptions
    for args in (("--direct_running_mode=multi_threading",),
                 ("--direct_running_mode", "in_memory")):
        with pytest.raises(WitError, match="--direct_running_mode=(multi_threading|in_memory) with [0-9]+ workers"):
            make_options(BeamOptions(workers=2, args=args))
    # the user's worker count alone: processes
    opts = make_options(BeamOptions(workers=1, args=("--direct_num_workers=3",)))
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    # one worker: any mode
    opts = make_options(BeamOptions(workers=1, args=("--direct_running_mode=multi_threading",)))
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_threading"
    # not the DirectRunner: untouched
    make_options(BeamOptions("DataflowRunner", 4, ("--direct_running_mode=multi_threading",)))
