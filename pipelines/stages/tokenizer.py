"""tokenizer: train the tokenizer on the corpus's train split; encode every split as a token stream.

The corpus table is read in batches, so memory stays flat whatever its size. Streams in
`streams/`: `corpus_<split>.bin` (+ JSON sidecar), documents joined by the end-of-text token.
The tasks' texts are encoded by their own `prepare@<task>` stages with this tokenizer, so adding
a task retrains neither the tokenizer nor the pretrained model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmcore.data import TokenStreamWriter
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from pipelines import tracking
from pipelines.data_params import SPLITS
from pipelines.layout import StageOutputs, outputs
from pipelines.params import load_params, load_raw_params
from pipelines.stages.common import json_dump, logger, run_stage
from pipelines.stages.sinks import ComputeClock

READ_ROWS = 4096


def split_texts(table: Path, split: str) -> Iterator[str]:
    """The texts of one split of a parquet table, a batch of rows at a time."""
    for batch in pq.ParquetFile(table).iter_batches(batch_size=READ_ROWS, columns=["text", "split"]):
        yield from batch.filter(pc.equal(batch["split"], split))["text"].to_pylist()


def build_tokenizer(config: TokenizerConfig, corpus: Path, out: StageOutputs) -> dict:
    """Train on the corpus's train split, write tokenizer.json and every split's stream; the stats."""
    out.streams.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(split_texts(corpus, "train"), config)
    tokenizer.save(out.tokenizer)
    stats: dict = {"vocab_size": tokenizer.vocab_size, "tokenizer_sha256": tokenizer.sha256()}
    for split in SPLITS:
        with TokenStreamWriter(out.streams / f"corpus_{split}.bin", tokenizer.vocab_size, tokenizer.sha256()) as writer:
            tokenizer.write_documents(split_texts(corpus, split), writer)
        stats[f"corpus_{split}"] = {"tokens": writer.meta.num_tokens, "bytes_per_token": writer.meta.bytes_per_token}
    return stats


def main() -> None:
    params = load_params()
    ingested, out = outputs("ingest"), outputs("tokenizer")
    upstream = {"ingest": ingested.dir, "validate": outputs("validate").dir}
    with tracking.stage_run(
        "tokenizer", params.tracking.experiment, {"tokenizer": load_raw_params()["tokenizer"]}, out.dir, upstream
    ):
        clock = ComputeClock()
        with clock.measure():
            stats = build_tokenizer(params.tokenizer, ingested.corpus, out)
        json_dump(out.stats, stats)
        tracking.log_metrics({**{k: v for k, v in stats.items() if isinstance(v, dict)}, **clock.metrics()})
        tracking.log_artifacts(out.tokenizer, out.stats)
        logger.info(
            "tokenizer: vocab %d, %s", stats["vocab_size"], {k: v for k, v in stats.items() if isinstance(v, dict)}
        )


if __name__ == "__main__":
    run_stage(main)
