"""Issue 17's targets against a finished run: each target, the run's figure, met or missed and by
how much. Reads `outputs/evaluate/summary.json` (the schema in docs/pipeline.md).

    python bench/targets.py                                  # the workspace's run
    python bench/targets.py --summary /tmp/long/outputs/evaluate/summary.json --profile long
    python bench/targets.py --repro-seconds 1040 --noop-seconds 1.5 --overhead 0.054

A label-budget target is met only with a difference at least the margin and a paired interval
above 0. The curve keeps one accuracy per point (no per-example predictions), so its intervals
are over the seeds (Student's t on the paired seed differences; at one seed there is none): a
curve target whose margin is reached but whose interval cannot be computed reads "unproven".
Timings are not in summary.json: pass what `time make repro`, a no-op `dvc repro` and
`bench/pipeline_overhead.py` measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats

CURVE_TARGETS = {("scratch", 0.10), ("tfidf", 0.05)}  # finetuned minus each, at 100 and 1,000 labels


def seed_differences(curve: list[dict], labels: int, baseline: str) -> list[float]:
    """finetuned minus baseline accuracy for each seed that has both at this budget (same labels)."""
    by_key = {(p["seed"], p["model"]): p["accuracy"] for p in curve if p["labels"] == labels}
    seeds = sorted({seed for seed, model in by_key if model == "finetuned"})
    return [by_key[(s, "finetuned")] - by_key[(s, baseline)] for s in seeds if (s, baseline) in by_key]


def interval(differences: list[float]) -> tuple[float, float] | None:
    if len(differences) < 2:
        return None
    mean, spread = statistics.mean(differences), statistics.stdev(differences) / len(differences) ** 0.5
    half = stats.t.ppf(0.975, len(differences) - 1) * spread
    return mean - half, mean + half


def curve_rows(summary: dict) -> list[tuple[str, str, str]]:
    rows = []
    for task in ("sst2", "imdb"):
        for labels in (100, 1000):
            for baseline, margin in sorted(CURVE_TARGETS):
                diffs = seed_differences(summary["curves"].get(task, []), labels, baseline)
                target = f"{task} {labels} labels: finetuned - {baseline} >= {margin:+.2f}, CI > 0"
                if not diffs:
                    rows.append((target, "no curve point", "missing"))
                    continue
                mean, ci = statistics.mean(diffs), interval(diffs)
                figure = f"{mean:+.3f} over {len(diffs)} seed(s)" + (f", CI {ci[0]:+.3f}..{ci[1]:+.3f}" if ci else "")
                if mean < margin:
                    verdict = f"missed by {margin - mean:.3f}"
                elif ci is None:
                    verdict = "unproven (no interval at one seed)"
                else:
                    verdict = "met" if ci[0] > 0 else "missed (CI includes 0)"
                rows.append((target, figure, verdict))
    return rows


def full_label_rows(summary: dict) -> list[tuple[str, str, str]]:
    tasks, paired = summary["tasks"], summary["paired"]
    rows = []
    for task, pair in paired.items():
        d = pair["scratch"]
        verdict = "met" if d["diff"] >= 0 else f"missed by {-d['diff']:.3f}"
        rows.append(
            (f"{task}: finetuned >= scratch", f"{d['diff']:+.3f} (CI {d['ci_low']:+.3f}..{d['ci_high']:+.3f})", verdict)
        )
    beaten = [t for t, pair in paired.items() if pair["tfidf"]["ci_low"] > 0]
    rows.append(("finetuned beats TF-IDF (CI > 0) on >= 4 of 5 tasks", f"{len(beaten)} ({', '.join(beaten) or 'none'})",
                 "met" if len(beaten) >= 4 else f"missed by {4 - len(beaten)} task(s)"))  # fmt: skip
    for task, goal in (("sst2", 0.85), ("imdb", 0.91)):
        accuracy = tasks[task]["finetuned"]["accuracy"]
        verdict = "met" if accuracy >= goal else f"missed by {goal - accuracy:.3f}"
        rows.append((f"{task} finetuned test accuracy >= {goal}", f"{accuracy:.3f}", verdict))
    return rows


def run_rows(summary: dict, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    bpb = summary["lm"]["imdb"]["bits_per_byte"]
    rows = [
        ("LM bits/byte on held-out IMDb <= 1.3", f"{bpb:.3f}", "met" if bpb <= 1.3 else f"missed by {bpb - 1.3:.3f}")
    ]
    for target, value, goal, unit in (
        ("default dvc repro from nothing <= 20 min", args.repro_seconds, 1200, "s"),
        ("no-op dvc repro <= 3 s", args.noop_seconds, 3, "s"),
        ("time outside model computation <= 10%", args.overhead, 0.10, ""),
    ):
        if value is None:
            rows.append((target, "not given", "not measured here"))
        else:
            rows.append((target, f"{value:g}{unit}", "met" if value <= goal else f"missed by {value - goal:g}{unit}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, default=Path("outputs/evaluate/summary.json"))
    parser.add_argument("--profile", default="default", help="a name for the printed table")
    parser.add_argument("--repro-seconds", type=float, help="wall time of the run from nothing")
    parser.add_argument("--noop-seconds", type=float, help="wall time of a no-op dvc repro")
    parser.add_argument("--overhead", type=float, help="share of time outside model computation (0-1)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    rows = curve_rows(summary) + full_label_rows(summary) + run_rows(summary, args)
    if args.json:
        print(
            json.dumps(
                {
                    "profile": args.profile,
                    "targets": [dict(zip(("target", "figure", "verdict"), r, strict=True)) for r in rows],
                }
            )
        )
        return
    print(f"| target ({args.profile} profile) | figure | verdict |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
