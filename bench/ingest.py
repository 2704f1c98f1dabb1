"""Ingest plus tokenization of a corpus: MB/s and peak resident memory, as the stages run them.

    python bench/ingest.py                      # the default corpus (IMDb's 50k unlabeled reviews)
    python bench/ingest.py --copies 8           # a corpus of 8 copies of it (about 525 MB of text)

Runs the ingest stage's `build_corpus` and the tokenizer stage's `build_tokenizer` in this
process, with the project's params.yaml (its `ingest.sources` replaced by the corpus), in a
temporary folder; no MLflow, no DVC. Each copy of `--copies` prefixes every review with its copy
number, so that deduplication keeps them all. Prints one JSON object: megabytes of raw text,
seconds and MB/s of each part and of both, the process's peak RSS, and documents and tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.params import load_params  # noqa: E402
from pipelines.stages.ingest import build_corpus  # noqa: E402
from pipelines.stages.tokenizer import build_tokenizer  # noqa: E402


def repeated_corpus(source: Path, copies: int, target: Path) -> None:
    """`copies` copies of a .jsonl.gz corpus, each review prefixed with its copy number."""
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as out:
        for copy in range(copies):
            with gzip.open(source, "rt", encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    row["text"] = f"[copy {copy}] {row['text']}"
                    out.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data/imdb/unsup.jsonl.gz")
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = args.corpus.resolve()
        if args.copies > 1:
            corpus = work / "corpus.jsonl.gz"
            repeated_corpus(args.corpus, args.copies, corpus)
        params = dataclasses.replace(params, ingest=dataclasses.replace(params.ingest, sources=[str(corpus)]))
        os.chdir(work)
        start = time.perf_counter()
        stats = build_corpus(params, work)
        ingested = time.perf_counter()
        tokens = build_tokenizer(params.tokenizer, work / "corpus.parquet", work / "tokenizer")
        done = time.perf_counter()
    megabytes = sum(stats["characters"].values()) / 1e6  # characters of the kept documents (nearly all ASCII)
    print(
        json.dumps(
            {
                "corpus": str(args.corpus),
                "copies": args.copies,
                "megabytes": round(megabytes, 1),
                "documents": sum(stats["documents"].values()),
                "tokens": sum(v["tokens"] for k, v in tokens.items() if k.startswith("corpus_")),
                "ingest_seconds": round(ingested - start, 1),
                "tokenizer_seconds": round(done - ingested, 1),
                "ingest_mb_per_s": round(megabytes / (ingested - start), 2),
                "tokenizer_mb_per_s": round(megabytes / (done - ingested), 2),
                "mb_per_s": round(megabytes / (done - start), 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "threads": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
