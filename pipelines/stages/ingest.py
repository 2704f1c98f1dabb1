"""ingest: the pretraining corpus's sources -> repaired, checked, deduplicated, split parquet.

Sources stream through in chunks (memory stays flat whatever the corpus size). Each document is
repaired (mojibake, markup), checked against the per-document rules (a failure goes to
`quarantine.jsonl` with its file and row), deduplicated and given a split by its salted hash.
Outputs are built in a temporary folder and swapped in only when everything was read, so a bad
source leaves the last good outputs in place (the DVC out is `persist: true`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import tracking
from pipelines.corpus import ReadSpec, Record, expand_sources, iter_records
from pipelines.data_params import SPLITS
from pipelines.layout import StageOutputs, outputs
from pipelines.params import ROOT, Params, load_params, load_raw_params
from pipelines.splits import assign_split
from pipelines.stages.common import fresh_dir, json_dump, logger, run_stage, swap_in
from pipelines.stages.sinks import ComputeClock
from pipelines.tables import DocumentCleaner


def corpus_records(params: Params) -> Iterator[list[Record]]:
    corpus = params.ingest
    spec = ReadSpec(document_split=corpus.document_split, text_field=corpus.text_field)
    for location in expand_sources(corpus.sources, ROOT):
        logger.info("reading %s", location)
        yield from iter_records(location, spec, params.data.chunk_rows)


def build_corpus(params: Params, out: StageOutputs) -> dict:
    """Write the corpus table in chunks; return its stats (documents, characters, per-source counts)."""
    corpus = params.ingest
    cleaner = DocumentCleaner(params.data, out.quarantine)
    documents, characters = Counter(), Counter()
    writer = None
    for records in corpus_records(params):
        rows = []
        for record in records:
            cleaned = cleaner.clean(record)
            if cleaned is None:
                continue
            _, row = cleaned
            row["split"] = assign_split(
                row["hash"], params.data.split_salt, corpus.validation_fraction, corpus.test_fraction
            )
            documents[row["split"]] += 1
            characters[row["split"]] += row["n_chars"]
            rows.append(row)
        if not rows:
            continue
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(out.corpus, table.schema)
        writer.write_table(table.cast(writer.schema))
    sources = cleaner.close()
    if writer is None:
        raise ValueError(f"no documents were read from ingest.sources {corpus.sources}")
    writer.close()
    return {
        "documents": {s: documents[s] for s in SPLITS},
        "characters": {s: characters[s] for s in SPLITS},
        "sources": sources,
    }


def main() -> None:
    params = load_params()
    out = outputs("ingest")
    tmp = out.at(fresh_dir(out.dir))
    raw = load_raw_params()
    with tracking.stage_run(
        "ingest", params.tracking.experiment, {"ingest": raw["ingest"], "data": raw["data"]}, tmp.dir
    ):
        clock = ComputeClock()
        with clock.measure():
            stats = build_corpus(params, tmp)
        json_dump(tmp.stats, stats)
        frame = pd.read_parquet(tmp.corpus, columns=["doc_id", "split", "n_chars"])
        tracking.log_table_input(frame, out.corpus, "corpus", context="ingested")
        tracking.log_metrics({**stats, **clock.metrics()})
        tracking.log_artifacts(tmp.stats, tmp.quarantine)
        logger.info("ingested %s", {k: v for k, v in stats.items() if k != "sources"})
    # Swap in the complete outputs only now: a failure above leaves the previous run's files.
    swap_in(tmp.dir, out.dir)


if __name__ == "__main__":
    run_stage(main)
