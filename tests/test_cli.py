import json
import os

import pytest

from pipelines import cli
from wit_builder.core import WitError, atomic_open, atomic_write_json, match_paths


def test_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["nonsense"])
    assert exc.value.code == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_open(str(target), "w") as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    atomic_write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_match_paths_errors_name_the_pattern(tmp_path):
    with pytest.raises(WitError, match="matches no files"):
        match_paths([str(tmp_path / "missing-*.xml")])
    (tmp_path / "b.txt").write_text("x")
    (tmp_path / "a.txt").write_text("x")
    assert [os.path.basename(p) for p in match_paths([str(tmp_path)])] == ["a.txt", "b.txt"]


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    from wit_builder import core as common
    atomic_write_json(str(tmp_path / "a.json"), [1])
    assert (os.stat(tmp_path / "a.json").st_mode & 0o777) == 0o666 & ~common._UMASK != 0o600


def test_a_wit_error_inside_a_beam_step_is_one_clean_line(capsys):
    """In process (Beam annotates the message and logs a traceback) and as worker processes
    report it (a RuntimeError holding the text: mapped back). Multi-process pipelines are not
    run here: Beam's DirectRunner can hang stopping its workers after a failed bundle."""
    import apache_beam as beam

    from pipelines.beam_options import BeamOptions, run_pipeline

    def fail(_):
        raise WitError("nothing left to write from X")
    with pytest.raises(WitError) as info:
        run_pipeline(lambda p: p | beam.Create([1]) | "Step" >> beam.Map(fail), BeamOptions())
    assert str(info.value) == "nothing left to write from X"
    assert "Traceback" not in capsys.readouterr().err

    def remote(p):
        raise RuntimeError("Pipeline job failed:\nTraceback (most recent call last):\n  ...\n"
                           "wit_builder.core.WitError: key 1 appears twice [while running 'Step']\n")
    with pytest.raises(WitError) as info:
        run_pipeline(remote, BeamOptions())
    assert str(info.value) == "key 1 appears twice"
    with pytest.raises(RuntimeError):          # anything else is not turned into a WitError
        run_pipeline(lambda p: (_ for _ in ()).throw(RuntimeError("boom")), BeamOptions())


def _all_help_texts(capsys) -> dict[str, str]:
    """`wit COMMAND --help` (and `wit dedup ACTION --help`, `wit tokenizer train --help`) by command."""
    commands = [[name] for name in cli.COMMANDS]
    commands += [["dedup", a] for a in ("train", "calibrate", "run", "overlap")] + [["tokenizer", "train"]]
    texts = {}
    for argv in commands:
        with pytest.raises(SystemExit) as exc:
            cli.main(argv + ["--help"])
        assert exc.value.code == 0, argv
        texts[" ".join(argv)] = capsys.readouterr().out
    return texts


def test_help_shows_only_defaults_that_say_something(capsys):
    import re
    for command, text in _all_help_texts(capsys).items():
        flat = " ".join(text.split())
        assert "(default: None)" not in flat, command
        assert "(default: False)" not in flat and "(default: True)" not in flat, command
        assert not re.search(r"\(default: [\[(]", flat), f"{command}: a list default in Python syntax"
        # no second default after help that already states one
        for option_help in re.split(r"\n  (?=-)", text):
            option_help = " ".join(option_help.split())
            if "(default:" in option_help:
                before = option_help[:option_help.rindex("(default:")]
                assert not re.search(r"\(default\b|\bdefaults? ?[:=]", before, re.I), f"{command}: {option_help}"
    # required options show no default; list defaults are comma strings as typed
    collect = " ".join(_all_help_texts(capsys)["collect"].split())
    assert re.search(r"--queries QUERIES .*?(?=--input)", collect).group(0).count("default") == 0
    download = " ".join(_all_help_texts(capsys)["download"].split())
    assert "(default: noai,noimageai,noindex,noimageindex)" in download


def test_version(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"wit {version(cli.DISTRIBUTION)}"
    assert cli.DISTRIBUTION != "wit"  # the PyPI name `wit` belongs to another project
