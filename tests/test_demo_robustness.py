"""eval/robustness.json's arithmetic and the report section drawn from it."""
from __future__ import annotations

import json

from wit_builder.sim.robustness import robustness_section, robustness_summary


def test_summary_gap_is_in_distribution_minus_shifted_mean():
    r = robustness_summary({"clip": {"shapes": 0.9, "a": 0.7, "b": 0.5, "colours": 1.0},
                            "sup": {"shapes": 0.95, "a": 0.3}},
                           "shapes", ["a", "b"], 0.125)
    clip, sup = r["models"]["clip"], r["models"]["sup"]
    assert clip["shifted"] == {"a": 0.7, "b": 0.5} and abs(clip["shifted_mean"] - 0.6) < 1e-12
    assert abs(clip["gap"] - 0.3) < 1e-12
    assert sup["shifted"] == {"a": 0.3} and abs(sup["gap"] - 0.65) < 1e-12  # only the sets it has
    none = robustness_summary({"m": {"shapes": 0.5}}, "shapes", ["a"], 0.125)["models"]["m"]
    assert none["shifted_mean"] is None and none["gap"] is None


def test_section_has_table_and_figure_or_says_what_is_missing(tmp_path):
    missing = robustness_section(str(tmp_path))
    assert missing.blocks[0][0] == "note" and "robustness.json" in missing.blocks[0][1]
    r = robustness_summary({"CLIP zero-shot": {"shapes": 0.8, "x": 0.6}, "supervised": {"shapes": 0.9, "x": 0.4}},
                           "shapes", ["x"], 0.125)
    (tmp_path / "robustness.json").write_text(json.dumps(r))
    s = robustness_section(str(tmp_path))
    kinds = [b[0] for b in s.blocks]
    assert kinds == ["p", "table", "figure"]
    header, rows = s.blocks[1][1], s.blocks[1][2]
    assert header == ["model", "shapes", "x", "shifted mean", "gap"]
    assert rows[0] == ["CLIP zero-shot", "80.0%", "60.0%", "60.0%", "20.0%"]
    assert rows[1][-1] == "50.0%"
    assert s.blocks[2][1] == "robustness.png" and s.blocks[2][2][:4] == b"\x89PNG"
