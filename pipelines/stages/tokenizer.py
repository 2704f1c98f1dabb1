"""tokenizer: train the tokenizer on the train splits, write tokenizer.json and the token streams.

Streams in `streams/`: `<table>_<split>.bin` (+ JSON sidecar) for every split of both tables, documents joined
by the end-of-text token; labeled examples as `labeled_<split>.npz` for classification.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmcore.data import LabeledExamples, save_labeled, write_token_stream
from lmcore.tokenizer import TextTokenizer, train_tokenizer
from pipelines import tracking
from pipelines.corpus import json_dump
from pipelines.params import load_params, load_raw_params
from pipelines.stages.common import ComputeClock, logger, run_stage, stage_dir

SPLITS = ("train", "validation", "test")


def encode_documents(tokenizer: TextTokenizer, texts: list[str]) -> tuple[np.ndarray, int]:
    """All documents as one stream, each followed by end-of-text; and their UTF-8 byte count."""
    pieces = []
    for start in range(0, len(texts), 4096):
        for ids in tokenizer.encode_batch(texts[start : start + 4096]):
            pieces.append(np.asarray([*ids, tokenizer.eot_id], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return stream, sum(len(t.encode()) + 1 for t in texts)


def main() -> None:
    params = load_params()
    ingested, out = stage_dir("ingest"), stage_dir("tokenizer")
    streams = out / "streams"
    streams.mkdir(parents=True, exist_ok=True)
    upstream = {"ingest": ingested, "validate": stage_dir("validate")}
    with tracking.stage_run(
        "tokenizer", params.tracking.experiment, {"tokenizer": load_raw_params()["tokenizer"]}, out, upstream
    ):
        clock = ComputeClock()
        with clock.measure():
            tables = {
                "pretrain": pd.read_parquet(ingested / "pretrain.parquet", columns=["text", "split"]),
                "labeled": pd.read_parquet(ingested / "labeled.parquet", columns=["text", "split", "label"]),
            }
            corpus = [
                t
                for name in params.tokenizer.train_on
                for t in tables[name].loc[tables[name]["split"] == "train", "text"]
            ]
            tokenizer = train_tokenizer(corpus, params.tokenizer.tokenizer_config())
            tokenizer.save(out / "tokenizer.json")
            stats: dict = {"vocab_size": tokenizer.vocab_size, "tokenizer_sha256": tokenizer.sha256()}
            label_index = {label: i for i, label in enumerate(params.ingest.labeled.labels)}
            for name, frame in tables.items():
                for split in SPLITS:
                    part = frame[frame["split"] == split]
                    stream, num_bytes = encode_documents(tokenizer, part["text"].tolist())
                    write_token_stream(
                        streams / f"{name}_{split}.bin", stream, tokenizer.vocab_size, num_bytes, tokenizer.sha256()
                    )
                    stats[f"{name}_{split}"] = {
                        "tokens": int(stream.size),
                        "bytes_per_token": num_bytes / max(stream.size, 1),
                    }
                    if name == "labeled":
                        examples = LabeledExamples(
                            tokenizer.encode_batch(part["text"].tolist()), [label_index[v] for v in part["label"]]
                        )
                        save_labeled(streams / f"labeled_{split}.npz", examples, tokenizer.vocab_size)
        json_dump(out / "stats.json", stats)
        tracking.log_metrics({**{k: v for k, v in stats.items() if isinstance(v, dict)}, **clock.metrics()})
        tracking.log_artifacts(out / "tokenizer.json", out / "stats.json")
        logger.info(
            "tokenizer: vocab %d, %s", tokenizer.vocab_size, {k: v for k, v in stats.items() if isinstance(v, dict)}
        )


if __name__ == "__main__":
    run_stage(main)
