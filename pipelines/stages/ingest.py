"""ingest: raw sources -> normalised, deduplicated, split parquet tables plus stats.json.

Outputs are built in a temporary folder and swapped in only when everything was read, so a bad
source leaves the last good outputs in place (the DVC outs are `persist: true`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import tracking
from pipelines.corpus import Record, assign_split, expand_sources, iter_records, json_dump, text_hash
from pipelines.params import ROOT, LabeledSource, load_params, load_raw_params
from pipelines.stages.common import ComputeClock, fresh_dir, logger, run_stage, stage_dir, swap_in

BAD_CHARS = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")


def build_table(
    path: Path, chunks: Iterator[tuple[list[Record], str | None]], salt: str, fractions: tuple[float, float]
) -> dict:
    """Write records to parquet in chunks; returns counts. `chunks` yields (records, fixed split)."""
    seen: set[bytes] = set()  # 32 bytes per document: the only state that grows with the corpus
    counts: Counter = Counter()
    chars: Counter = Counter()
    writer = None
    for records, fixed_split in chunks:
        rows = []
        for record in records:
            digest = text_hash(record.text)
            key = bytes.fromhex(digest)
            if key in seen:
                counts["duplicates_dropped"] += 1
                continue
            seen.add(key)
            split = fixed_split or assign_split(digest, salt, *fractions)
            counts[split] += 1
            chars[split] += len(record.text)
            entry = {
                "doc_id": digest[:16],
                "hash": digest,
                "split": split,
                "text": record.text,
                "n_chars": len(record.text),
                "bad_char_fraction": len(BAD_CHARS.findall(record.text)) / max(len(record.text), 1),
                "source": str(Path(record.source).relative_to(ROOT))
                if record.source.startswith(str(ROOT))
                else record.source,
                "row": record.row,
            }
            if record.label is not None:
                entry["label"] = record.label
            rows.append(entry)
        if not rows:
            continue
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table.cast(writer.schema))
    if writer is None:
        raise ValueError(f"no documents were read for {path.name}")
    writer.close()
    return {
        "documents": {s: counts[s] for s in ("train", "validation", "test")},
        "characters": {s: chars[s] for s in ("train", "validation", "test")},
        "duplicates_dropped": counts["duplicates_dropped"],
    }


def pretrain_chunks(params) -> Iterator[tuple[list[Record], None]]:
    for location in expand_sources(params.ingest.pretrain.sources, ROOT):
        logger.info("reading %s", location)
        for chunk in iter_records(
            location,
            params.ingest.pretrain.document_split,
            params.ingest.pretrain.text_field,
            None,
            params.ingest.chunk_rows,
        ):
            yield [r for r in chunk if r.text], None  # blank pieces between documents are not documents


def labeled_chunks(params) -> Iterator[tuple[list[Record], str | None]]:
    labeled = params.ingest.labeled
    # Fixed evaluation splits first: a text in both test and train files stays in test.
    order = {"test": 0, "validation": 1, "train": 2, "auto": 3}
    sources: list[LabeledSource] = sorted(labeled.sources, key=lambda s: order[s.split])
    for source in sources:
        for location in expand_sources([source.path], ROOT):
            logger.info("reading %s", location)
            for chunk in iter_records(
                location, "line", labeled.text_field, labeled.label_field, params.ingest.chunk_rows
            ):
                yield chunk, None if source.split == "auto" else source.split


def main() -> None:
    params = load_params()
    out = stage_dir("ingest")
    tmp = fresh_dir(out)
    with tracking.stage_run("ingest", params.tracking.experiment, {"ingest": load_raw_params()["ingest"]}, tmp):
        ingest = params.ingest
        clock = ComputeClock()
        with clock.measure():
            stats = {
                "pretrain": build_table(
                    tmp / "pretrain.parquet",
                    pretrain_chunks(params),
                    ingest.split_salt,
                    (ingest.pretrain.validation_fraction, ingest.pretrain.test_fraction),
                ),
                "labeled": build_table(
                    tmp / "labeled.parquet",
                    labeled_chunks(params),
                    ingest.split_salt,
                    (ingest.labeled.validation_fraction, 0.0),
                ),
            }
        json_dump(tmp / "stats.json", stats)
        for name in ("pretrain", "labeled"):
            frame = pd.read_parquet(tmp / f"{name}.parquet", columns=["doc_id", "split", "n_chars"])
            tracking.log_table_input(frame, out / f"{name}.parquet", name, context="ingested")
        tracking.log_metrics({**stats, **clock.metrics()})
        tracking.log_artifacts(tmp / "stats.json")
        logger.info("ingested %s", stats)
    # Swap in the complete outputs only now: a failure above leaves the previous run's files.
    swap_in(tmp, out)


if __name__ == "__main__":
    run_stage(main)
