"""What each stage writes, defined once: file names, Arrow schemas and the top-level keys of its
``stats.json``. The stages write with these schemas, later stages and the demo's report read
with these names, and ``tests/test_schemas.py`` checks that docs/schemas.md says the same."""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["QUERIES_SCHEMA", "MATCHED_SCHEMA", "BALANCED_SCHEMA", "COUNTS_SCHEMA", "DOWNLOAD_COLUMNS",
           "DECISIONS_SCHEMA", "EMBEDDINGS_SCHEMA", "SHARD_SCHEMA", "SHARD_JSON_FIELDS", "StageOutput", "OUTPUTS"]

# `wit queries` -> Q/queries.parquet
QUERIES_SCHEMA = pa.schema([
    ("id", pa.int32()), ("query", pa.string()), ("sources", pa.list_(pa.string())),
    ("unigram_count", pa.int64()), ("bigram_count", pa.int64()), ("bigram_pmi", pa.float64()),
    ("title_views", pa.int64()), ("wordnet_synsets", pa.int32()),
])

# `wit collect` -> OUT/matched/part-*.parquet, OUT/balanced/part-*.parquet, OUT/counts.parquet
MATCHED_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("page_url", pa.string()),
    ("source", pa.string()), ("lang", pa.string()), ("lang_prob", pa.float32()),
    ("query_ids", pa.list_(pa.int32())),
])
BALANCED_SCHEMA = MATCHED_SCHEMA.append(pa.field("keep_prob", pa.float64()))
COUNTS_SCHEMA = pa.schema([
    ("query_id", pa.int32()), ("query", pa.string()), ("count", pa.int64()), ("keep_prob", pa.float64()),
    ("kept", pa.int64()),
])

# `wit download` -> IMAGES/NNNNN.parquet (img2dataset's columns, the pairs' extra columns, our error_kind)
DOWNLOAD_COLUMNS = ("key", "url", "caption", "status", "error_message", "error_kind", "width", "height",
                    "original_width", "original_height", "sha256", "uid", "query_ids", "page_url",
                    "pairs", "other_texts")  # one row per image URL: the pairs merged, their other captions

# `wit dedup run` -> DEDUP/decisions.parquet, DEDUP/embeddings/*.parquet
DECISIONS_SCHEMA = pa.schema([
    ("uid", pa.string()), ("key", pa.string()), ("cluster_id", pa.int64()), ("cluster_size", pa.int32()),
    ("kept", pa.bool_()), ("nearest_similarity", pa.float32()), ("nearest_key", pa.string()),
    ("shard", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()),
])
EMBEDDINGS_SCHEMA = pa.schema([
    ("key", pa.string()), ("uid", pa.string()), ("shard", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("status", pa.string()),
    ("embedding", pa.list_(pa.float32())),            # null where status != "ok"
])

# `wit shards` -> SHARDS/NNNNN.parquet and each sample's KEY.json
SHARD_SCHEMA = pa.schema([
    ("key", pa.string()), ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
    ("query_ids", pa.list_(pa.int32())), ("sha256", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()),
    ("cluster_id", pa.int64()), ("cluster_size", pa.int32()), ("page_url", pa.string()),
])
SHARD_JSON_FIELDS = ("uid", "url", "text", "query_ids", "sha256", "width", "height", "original_width",
                     "original_height", "cluster_id", "cluster_size", "key", "page_url")


@dataclass(frozen=True)
class StageOutput:
    """One stage's output folder: its files (name -> Arrow schema, column names, or None for
    JSON/PNG/tar files) and the top-level keys its stats.json always has."""
    command: str
    folder: str
    files: dict = field(default_factory=dict)
    stats_keys: tuple = ()


OUTPUTS = {
    "queries": StageOutput("wit queries", "Q", {
        "queries.parquet": QUERIES_SCHEMA, "queries.txt": None, "stats.json": None, "queries.png": None},
        stats_keys=("output", "parts", "thresholds", "passed", "inputs", "run", "counters", "signature")),
    "collect": StageOutput("wit collect", "OUT", {
        "matched/part-NNNNN-of-MMMMM.parquet": MATCHED_SCHEMA, "counts.parquet": COUNTS_SCHEMA,
        "balanced/part-NNNNN-of-MMMMM.parquet": BALANCED_SCHEMA, "stats.json": None, "balance.png": None},
        stats_keys=("stage", "config", "queries", "num_shards", "matched", "per_query_cap", "seed",
                    "queries_matched", "head_queries", "tail_queries", "expected_size", "expected_size_sd",
                    "kept")),
    "download": StageOutput("wit download", "IMAGES", {
        "NNNNN.tar": None, "NNNNN.parquet": DOWNLOAD_COLUMNS, "NNNNN_stats.json": None, "_wit/summary.json": None}),
    "dedup": StageOutput("wit dedup run", "DEDUP", {
        "decisions.parquet": DECISIONS_SCHEMA, "stats.json": None, "embeddings/*.parquet": EMBEDDINGS_SCHEMA},
        stats_keys=("shards", "images", "embedded", "skipped", "threshold", "clusters", "kept",
                    "dropped_duplicates")),
    "shards": StageOutput("wit shards", "SHARDS", {
        "NNNNN.tar": SHARD_JSON_FIELDS, "NNNNN.parquet": SHARD_SCHEMA, "NNNNN_stats.json": None, "sizes.json": None,
        "manifest.json": None}),
}
