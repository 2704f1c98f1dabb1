"""Great Expectations adapter: the suites over the ingested tables, Data Docs, and a summary.

The only module that imports great_expectations. Each table is validated as a whole (text,
ids, labels), over its documents with the quarantined ones (no more than the allowed share broke
a per-document rule) and once per split (enough documents and characters for training). A failed
row check names the file and line or row of its first offending documents.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from pipelines.corpus import position_name  # noqa: E402
from pipelines.data_params import DataParams, ValidateParams  # noqa: E402

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
LOCATION_COLUMNS = ["source", "row"]  # written by the ingest stage for every document


@dataclass
class Failure:
    suite: str
    expectation: str
    column: str | None
    unexpected_count: int | None
    element_count: int | None
    examples: list[Any]
    observed: Any
    locations: list[str]  # "file line N" / "file row N" of the first examples, when GE reports them

    def describe(self) -> str:
        where = f" on column '{self.column}'" if self.column else ""
        counts = f": {self.unexpected_count} of {self.element_count} rows" if self.unexpected_count is not None else ""
        observed = f" (observed {self.observed})" if self.observed is not None and self.unexpected_count is None else ""
        examples = f"; examples: {[_short(e) for e in self.examples[:3]]}" if self.examples else ""
        at = f"; at {', '.join(self.locations[:3])}" if self.locations else ""
        return f"[{self.suite}] {self.expectation}{where} failed{counts}{observed}{examples}{at}"


def _locations(result: dict[str, Any]) -> list[str]:
    """Where GE's partial_unexpected_index_list points (it holds the LOCATION_COLUMNS)."""
    return [
        f"{index['source']} {position_name(index['source'])} {int(index['row'])}"
        for index in result.get("partial_unexpected_index_list") or []
        if isinstance(index, dict) and "source" in index and "row" in index
    ]


def _short(value: Any, limit: int = 80) -> Any:
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


def table_suite(name: str, data: DataParams, labels: list[str] | None) -> gx.ExpectationSuite:
    E = gx.expectations
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="text"))
    # The kept documents keep the per-document rules: ingest quarantined the others.
    suite.add_expectation(
        E.ExpectColumnValuesToBeBetween(column="n_chars", min_value=data.min_chars, max_value=data.max_chars)
    )
    suite.add_expectation(
        E.ExpectColumnValuesToBeBetween(column="bad_char_fraction", min_value=0.0, max_value=data.max_bad_char_fraction)
    )
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="doc_id"))
    # Exact duplicates are dropped at ingest, so a hash seen twice would also sit in two splits.
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="hash"))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    if labels is not None:
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="label"))
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="label", value_set=labels))
    return suite


def quarantine_suite(name: str, params: ValidateParams) -> gx.ExpectationSuite:
    """Over every document read, kept or quarantined: at most max_quarantined_share were quarantined."""
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="quarantine_reason", value_set=[""], mostly=1.0 - params.max_quarantined_share
        )
    )
    return suite


def documents_frame(table: pd.DataFrame, quarantined: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per document read (before deduplication): kept with reason '', quarantined with theirs."""
    kept = table[LOCATION_COLUMNS].assign(quarantine_reason="")
    aside = pd.DataFrame(quarantined, columns=[*LOCATION_COLUMNS, "reason"]).rename(
        columns={"reason": "quarantine_reason"}
    )
    return pd.concat([kept, aside], ignore_index=True)


def split_suite(
    name: str, params: ValidateParams, labels: list[str] | None, shares: tuple[float, float] | None
) -> gx.ExpectationSuite:
    E = gx.expectations
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=params.min_docs_per_split))
    suite.add_expectation(E.ExpectColumnSumToBeBetween(column="n_chars", min_value=params.min_chars_per_split))
    if labels is not None and shares is not None:
        low, high = shares
        for label in labels:
            # share(label) >= low and share(label) <= high
            suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="label", value_set=[label], mostly=low))
            suite.add_expectation(E.ExpectColumnValuesToNotBeInSet(column="label", value_set=[label], mostly=1 - high))
    return suite


@dataclass
class Table:
    frame: pd.DataFrame  # the kept documents, as ingest or prepare wrote them
    labels: list[str] | None  # the declared label values, or None for unlabeled text
    splits: list[str]  # the splits that must each hold enough documents
    quarantined: list[dict[str, Any]]  # the quarantine file's entries
    class_shares: tuple[float, float] | None = None  # (min, max) share of each class per split


def validate_tables(
    tables: dict[str, Table], data: DataParams, params: ValidateParams, docs_dir: Path
) -> tuple[bool, list[Failure], dict[str, Any]]:
    """Validate each named table; returns (success, failures, the full results as a JSON-ready
    dict) and writes Data Docs."""
    context = docs_context(docs_dir)
    batch = (
        context.data_sources.add_pandas("ingested")
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("whole")
    )
    summary = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    # Row checks report where their offending rows came from; the split suites' share checks do not,
    # since the rows of the other classes they count are not faults.
    located = {**summary, "unexpected_index_column_names": LOCATION_COLUMNS}
    runs: list[tuple[str, gx.ExpectationSuite, pd.DataFrame, dict[str, Any]]] = []
    for name, table in tables.items():
        runs.append((name, table_suite(name, data, table.labels), table.frame, located))
        documents = documents_frame(table.frame, table.quarantined)
        runs.append((f"{name}.documents", quarantine_suite(f"{name}.documents", params), documents, located))
        for split in table.splits:
            suite = split_suite(f"{name}.{split}", params, table.labels, table.class_shares)
            runs.append((f"{name}.{split}", suite, table.frame[table.frame["split"] == split], summary))
    failures: list[Failure] = []
    results: dict[str, Any] = {}
    for name, suite, frame, result_format in runs:
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"check-{name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["local"])],
                result_format=result_format,
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        results[name] = outcome.describe_dict()
        for validation in outcome.run_results.values():
            failures.extend(failure_of(name, r) for r in validation.results if not r.success)
    return not failures, failures, results


def docs_context(docs_dir: Path):
    """An ephemeral Great Expectations context that writes its Data Docs into `docs_dir`."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="local",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def failure_of(suite: str, r) -> Failure:
    return Failure(
        suite=suite,
        expectation=r.expectation_config.type,
        column=r.expectation_config.kwargs.get("column"),
        unexpected_count=r.result.get("unexpected_count"),
        element_count=r.result.get("element_count"),
        examples=list(r.result.get("partial_unexpected_list") or []),
        observed=r.result.get("observed_value"),
        locations=_locations(r.result),
    )
