"""From records to table rows: repair, the per-document rules, quarantine, deduplication.

Shared by the corpus (`ingest`, streamed in chunks) and the tasks (`prepare@<task>`). Every row
keeps its source file and row; a document that still breaks a rule after repair goes to the
quarantine file with them, and the counts of each repair and each quarantine reason are kept per
source for the stats, the report and MLflow.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pipelines.cleaning import Repairs, repair
from pipelines.corpus import Record, text_hash
from pipelines.data_params import DataParams
from pipelines.params import ROOT

BAD_CHARS = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")
QUARANTINE_TEXT_CHARS = 500  # of each quarantined document, enough to see what is wrong


def display_source(location: str) -> str:
    """A source as the user named it: relative to the project when it is inside it."""
    root = str(ROOT) + "/"
    return location[len(root) :] if location.startswith(root) else location


class DocumentCleaner:
    """Repairs records, applies the per-document rules, drops exact duplicates; counts per source.

    `clean(record)` returns the repaired record and its row fields, or None when the record is a
    duplicate or was quarantined (written to the quarantine file).
    """

    def __init__(self, data: DataParams, quarantine_path: Path) -> None:
        self.data = data
        self.repairs = Repairs(data.repair_mojibake, data.strip_markup)
        self.seen: set[bytes] = set()  # 32 bytes per document: the only state that grows with the corpus
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.quarantine = open(quarantine_path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def fault(self, text: str, bad_fraction: float) -> str | None:
        if len(text) < self.data.min_chars:
            return f"shorter than min_chars={self.data.min_chars}"
        if len(text) > self.data.max_chars:
            return f"longer than max_chars={self.data.max_chars}"
        if bad_fraction > self.data.max_bad_char_fraction:
            return f"bad characters {bad_fraction:.4f} above max_bad_char_fraction={self.data.max_bad_char_fraction}"
        return None

    def clean(self, record: Record) -> tuple[Record, dict[str, Any]] | None:
        source = display_source(record.source)
        counts = self.counts[source]
        counts["read"] += 1
        text, done = repair(record.text, self.repairs)
        text = text.strip()
        counts.update(f"repaired_{kind}" for kind in done)
        bad_fraction = len(BAD_CHARS.findall(text)) / max(len(text), 1)
        reason = self.fault(text, bad_fraction)
        if reason is not None:
            counts["quarantined"] += 1
            entry = {"source": source, "row": record.row, "reason": reason, "n_chars": len(text)}
            entry.update(bad_char_fraction=bad_fraction, text=text[:QUARANTINE_TEXT_CHARS])
            self.quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")
            return None
        digest = text_hash(text)
        key = bytes.fromhex(digest)
        if key in self.seen:
            counts["duplicates_dropped"] += 1
            return None
        self.seen.add(key)
        counts["kept"] += 1
        row = {
            "doc_id": digest[:16],
            "hash": digest,
            "text": text,
            "n_chars": len(text),
            "bad_char_fraction": bad_fraction,
            "source": source,
            "row": record.row,
        }
        return Record(text, record.source, record.row, record.label), row

    def close(self) -> dict[str, dict[str, int]]:
        """The counts per source: read, repaired_<kind>, quarantined, duplicates_dropped, kept."""
        self.quarantine.close()
        return {source: dict(sorted(counts.items())) for source, counts in self.counts.items()}


def read_quarantine(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
