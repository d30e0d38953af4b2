"""The simulated web's problem cases followed through a demo run's stage outputs: per case, how
many links the manifest has, the stage expected to drop them, and how many were collected,
downloaded and put in the final shards (by uid and URL). :func:`trace_cases` for the end-to-end
test, :func:`problem_cases_section` for the report.
"""
from __future__ import annotations

import os

from wit_builder.core import read_json_or_none
from wit_builder.sim.reportdoc import Section

__all__ = ["trace_cases", "problem_cases_section"]


def problem_cases_section(demo_dir: str) -> Section:
    """A table from the simulated web's manifest: per problem case, how many links there were,
    the stage expected to drop them, and where they actually went (collect / download / dedup /
    final shards), read back from the stage outputs by uid and URL."""
    s = Section("Problem cases of the simulated web", "cases")
    try:
        t = trace_cases(demo_dir)
    except (OSError, ValueError, KeyError) as exc:
        return s.note(f"could not trace the problem cases: {exc}")
    rows = [[case, r["links"], r["expected"], r["collected"], r["downloaded"], r["in_shards"]]
            for case, r in t.items()]
    s.p("Every problem case of the simulated web, followed through the stages by uid (collect) and "
        "URL (download, shards). 'collected' counts links whose pair reached `balanced/`.")
    return s.table(["case", "links", "expected to be dropped by", "collected", "downloaded",
                    "in final shards"], rows)


_EXPECTED_DROP = {"head": "balance (capped)", "non_english": "collect (language)",
                  "no_query": "collect (no match)", "empty_alt": "collect (empty text)",
                  "missing_alt": "collect (empty text)", "data_uri": "collect (not http)",
                  "broken_link": "download (404)", "opt_out": "download (X-Robots-Tag)",
                  "corrupt": "download (decode) or dedup", "not_image": "download (content type)",
                  "near_duplicate": "dedup (one kept per group)", "redirect": "nothing (must download)"}


def _column(folder: str, name: str) -> set:
    """Every value of column ``name`` in the folder's ``*.parquet`` files."""
    import pyarrow.parquet as pq
    out = set()
    if not os.path.isdir(folder):
        return out
    for f in sorted(os.listdir(folder)):
        if f.endswith(".parquet"):
            out.update(pq.read_table(os.path.join(folder, f), columns=[name]).column(name).to_pylist())
    return out


def _downloaded_urls(images: str) -> set:
    import pyarrow.parquet as pq
    ok_urls = set()
    if os.path.isdir(images):
        for f in sorted(os.listdir(images)):
            if f[:1].isdigit() and f.endswith(".parquet"):
                t = pq.read_table(os.path.join(images, f), columns=["url", "status"]).to_pydict()
                ok_urls.update(u for u, st in zip(t["url"], t["status"]) if st == "success")
    return ok_urls


def trace_cases(demo_dir: str) -> dict:
    """``{case: {"links", "expected", "collected", "downloaded", "in_shards"}}`` for the report
    and the end-to-end test."""
    m = read_json_or_none(os.path.join(demo_dir, "raw", "manifest.json"))
    if m is None:
        raise OSError("raw/manifest.json missing")
    collected = _column(os.path.join(demo_dir, "collect", "balanced"), "uid")
    ok_urls = _downloaded_urls(os.path.join(demo_dir, "images"))
    shard_urls = _column(os.path.join(demo_dir, "shards"), "url")
    out = {}
    for case, expected in _EXPECTED_DROP.items():
        links = [l for l in m["links"] if case in l["cases"]]
        out[case] = {"links": len(links), "expected": expected,
                     "collected": sum(1 for l in links if l.get("uid") in collected),
                     "downloaded": sum(1 for l in links if l.get("uid") in collected and l["url"] in ok_urls),
                     "in_shards": sum(1 for l in links if l.get("uid") in collected and l["url"] in shard_urls)}
    return out
