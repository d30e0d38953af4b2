"""docs/schemas.md and wit_builder/schemas.py say the same thing: every file, column (with its
type where the page gives one) and stats.json key of every stage."""
import os
import re

import pyarrow as pa
import pytest

from wit_builder.schemas import OUTPUTS

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "schemas.md")
TYPE_WORDS = r"(int\d+|float\d+|string|bool|list<[^>]+>)"


def sections(text: str) -> dict[str, str]:
    """'wit queries' -> the text of its section."""
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"## `(wit [\w ]+)` -> ", line)
        if m:
            name = m.group(1)
            out[name] = ""
        elif line.startswith("## "):
            name = None
        elif name:
            out[name] += line + "\n"
    return out


def rows(section: str) -> dict[str, str]:
    """file name -> its table row's content."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", section, re.M)}


def arrow_type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"list<{arrow_type_name(t.value_type)}>"
    return {"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(t), str(t))


SECTIONS = sections(open(DOC, encoding="utf-8").read())


@pytest.mark.parametrize("stage", sorted(OUTPUTS))
def test_docs_list_every_file_and_column_of_the_code(stage):
    out = OUTPUTS[stage]
    assert out.command in SECTIONS, f"docs/schemas.md has no section for {out.command}"
    table = rows(SECTIONS[out.command])
    assert set(table) == set(out.files), (sorted(table), sorted(out.files))
    for name, spec in out.files.items():
        row = table[name]
        if isinstance(spec, pa.Schema):
            typed = dict(re.findall(r"`(\w+)` " + TYPE_WORDS, row))
            for other, other_row in table.items():   # "the rows of `matched/` plus ...": inherit its columns
                if other != name and "/" in other and f"`{other.split('/')[0]}/`" in row:
                    typed = {**dict(re.findall(r"`(\w+)` " + TYPE_WORDS, other_row)), **typed}
            code = {f.name: arrow_type_name(f.type) for f in spec}
            # every column of the code is documented with its type, and the page names no other
            assert {k: typed.get(k) for k in code} == code, name
            assert set(typed) <= set(code), (name, set(typed) - set(code))
        elif spec is not None:                    # column or field names without types
            for column in spec:
                assert f"`{column}`" in row, (name, column)
    if out.stats_keys:
        stats_row = table["stats.json"]
        for key in out.stats_keys:
            assert f"`{key}`" in stats_row, (stage, key)


def test_the_check_fails_on_a_page_that_disagrees():
    out = OUTPUTS["collect"]
    row = rows(SECTIONS[out.command])["counts.parquet"].replace("`kept` int64", "`kept` int32")
    typed = dict(re.findall(r"`(\w+)` " + TYPE_WORDS, row))
    assert typed["kept"] != arrow_type_name(out.files["counts.parquet"].field("kept").type)
