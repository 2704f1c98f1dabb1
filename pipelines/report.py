"""The evaluation report: summary.json (a stable schema to gate CI on), report.md and its plots.

summary.json:
- `tasks.<task>.<model>`: {accuracy, macro_f1, ci_low, ci_high} for finetuned, scratch, tfidf
  and majority on the task's test split, and for finetuned and scratch {ece, ece_calibrated}
  (before and after the temperature fitted on validation); `tasks_mean.<model>`: the mean accuracy
- `paired.<task>.<baseline>`: {diff, ci_low, ci_high}: finetuned minus the baseline, paired bootstrap
- `curves.<task>`: [{labels, seed, model, accuracy}], the label-budget curve
- `generalization.<task>.<test_set>`: {accuracy, ci_low, ci_high} of the task's finetuned classifier
- `lm.<text>`: {bits_per_byte, xz_bits_per_byte, gzip_bits_per_byte, bytes}
- `text_tasks.<task>`: `metric` (translation | dialogue), `finetuned` (the metric's scores, e.g.
  translation's {bleu, chrf}, dialogue's {bleu1, bleu2, distinct_1, distinct_2, reference_distinct_1,
  reference_distinct_2}, sacreBLEU's each with `_ci_low`/`_ci_high` (bootstrap 95%) and `_signature`,
  and response_perplexity), `baselines.<name>` (the same headline scores: translation's copy_source,
  dialogue's copy_last_turn and most_common_response; `paired.<score>` {diff, ci_low, ci_high}: the
  finetuned model minus it, paired bootstrap 95%), `pairs` (test pairs scored), `bytes_per_token`
  {sources, references} (UTF-8 bytes per token of the test texts): a section of its
  own, as in params.yaml, so `tasks` and `tasks_mean` stay classification's
- `qa`: `questions` (how many), `models.<model>` {exact_match, f1, each with `_ci_low`/`_ci_high`
  (bootstrap 95%, in percent)} for `zero_shot` (the pretrained LM) and each text task's model,
  `baselines.best_sentence` (the same scores): extractive questions no model was trained on
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.text_tasks import HEADLINE  # noqa: E402

MODELS = ("finetuned", "scratch", "tfidf", "majority")
SCORE_KEYS = ("accuracy", "macro_f1", "ci_low", "ci_high", "ece", "ece_calibrated")  # ece: neural models only
TEXT_HEADINGS = {"bleu": "BLEU", "chrf": "chrF", "bleu1": "BLEU-1", "bleu2": "BLEU-2"}
TEXT_HEADINGS |= {"distinct_1": "distinct-1", "distinct_2": "distinct-2"}


def build_summary(
    results: dict[str, dict],
    lm: dict[str, dict],
    lm_eval: dict[str, dict] | None = None,
    text_results: dict[str, dict] | None = None,
    qa: dict | None = None,
) -> dict:
    tasks = {
        name: {m: {k: r["test"][m][k] for k in SCORE_KEYS if k in r["test"][m]} for m in MODELS if m in r["test"]}
        for name, r in results.items()
    }
    summary = {
        "tasks": tasks,
        "tasks_mean": {
            m: float(np.mean([t[m]["accuracy"] for t in tasks.values()]))
            for m in MODELS
            if tasks and all(m in t for t in tasks.values())
        },
        "paired": {
            name: {
                m: {"diff": e["finetuned_minus_this"], "ci_low": e["diff_ci_low"], "ci_high": e["diff_ci_high"]}
                for m, e in r["test"].items()
                if "finetuned_minus_this" in e
            }
            for name, r in results.items()
        },
        "curves": {
            name: [{k: p[k] for k in ("labels", "seed", "model", "accuracy")} for p in r["curve"]]
            for name, r in results.items()
            if r["curve"]
        },
        "generalization": {
            name: {
                other: {k: e[k] for k in ("accuracy", "ci_low", "ci_high")} for other, e in r["generalization"].items()
            }
            for name, r in results.items()
            if r["generalization"]
        },
        "lm": lm,
        "lm_eval": lm_eval or {},
        "text_tasks": {
            name: {
                "metric": m["metric"],
                "finetuned": {k: v for k, v in m["test"].items() if k not in ("baselines", "pairs")},
                "baselines": m["test"]["baselines"],
                "pairs": m["test"]["pairs"],
                "bytes_per_token": m["bytes_per_token"],
            }
            for name, m in (text_results or {}).items()
        },
        "qa": qa or {},
    }
    return summary


def curve_bands(points: list[dict], test_size: int) -> dict[str, list[tuple[int, float, float, float]]]:
    """Per model: (labels, mean accuracy, band low, band high) over seeds. The band is a 95% normal
    interval from the seeds' spread plus the test split's own sampling error."""
    bands: dict[str, list[tuple[int, float, float, float]]] = {}
    for model in sorted({p["model"] for p in points}):
        rows = []
        for n in sorted({p["labels"] for p in points if p["model"] == model}):
            accuracy = np.array([p["accuracy"] for p in points if p["model"] == model and p["labels"] == n])
            mean = float(accuracy.mean())
            spread = accuracy.var(ddof=1) / len(accuracy) if len(accuracy) > 1 else 0.0
            se = math.sqrt(spread + mean * (1 - mean) / max(test_size, 1))
            rows.append((n, mean, mean - 1.96 * se, mean + 1.96 * se))
        bands[model] = rows
    return bands


def plot_generality(summary: dict, path: Path) -> Path:
    names = list(summary["tasks"])
    models = [m for m in MODELS if all(m in summary["tasks"][t] for t in names)]
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        acc = [summary["tasks"][t][model]["accuracy"] for t in names]
        low = [a - summary["tasks"][t][model]["ci_low"] for a, t in zip(acc, names, strict=True)]
        high = [summary["tasks"][t][model]["ci_high"] - a for a, t in zip(acc, names, strict=True)]
        axis.bar(np.arange(len(names)) + i * width, acc, width, yerr=[low, high], capsize=3, label=model)
    axis.set_xticks(np.arange(len(names)) + width * (len(models) - 1) / 2, names)
    axis.set(ylim=(0, 1), ylabel="test accuracy (95% bootstrap CI)", title="Generality: every task")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curve(task: str, points: list[dict], test_size: int, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    for model, rows in curve_bands(points, test_size).items():
        x, mean, low, high = (np.array(v) for v in zip(*rows, strict=True))
        axis.plot(x, mean, marker="o", label=model)
        axis.fill_between(x, low, high, alpha=0.2)
    axis.set_xscale("log")
    axis.set(xlabel="labeled training examples", ylabel="test accuracy", title=f"{task}: label-budget curve")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _ci(entry: dict) -> str:
    return f"{entry['accuracy']:.3f} ({entry['ci_low']:.3f}-{entry['ci_high']:.3f})"


def generality_lines(summary: dict) -> list[str]:
    models = [m for m in MODELS if m in summary["tasks_mean"]]
    lines = ["## Generality: test accuracy per task (95% bootstrap CI)", ""]
    lines += [
        "| task | " + " | ".join(models) + " | finetuned - scratch | finetuned - tfidf |",
        "|" + " --- |" * (len(models) + 3),
    ]
    for name, scores in summary["tasks"].items():
        paired = summary["paired"][name]
        diffs = [
            f"{paired[b]['diff']:+.3f} ({paired[b]['ci_low']:+.3f}, {paired[b]['ci_high']:+.3f})"
            if b in paired
            else "-"
            for b in ("scratch", "tfidf")
        ]
        lines.append(f"| {name} | " + " | ".join(_ci(scores[m]) for m in models) + " | " + " | ".join(diffs) + " |")
    lines.append("| **mean** | " + " | ".join(f"{summary['tasks_mean'][m]:.3f}" for m in models) + " | | |")
    return lines


def generalization_lines(summary: dict) -> list[str]:
    if not summary["generalization"]:
        return []
    lines = ["## Generalization: each task's finetuned classifier out of domain", ""]
    lines += ["| trained on | in domain | tested on | accuracy |", "| --- | --- | --- | --- |"]
    for name, sets in summary["generalization"].items():
        for other, entry in sets.items():
            lines.append(f"| {name} | {_ci(summary['tasks'][name]['finetuned'])} | {other} | {_ci(entry)} |")
    return lines


def calibration_lines(summary: dict) -> list[str]:
    rows = [(n, m, e) for n, scores in summary["tasks"].items() for m, e in scores.items() if "ece" in e]
    if not rows:
        return []
    lines = ["## Calibration: expected calibration error on the test split (15 bins)", ""]
    lines += ["The served classifiers divide their logits by the temperature fitted on the validation split.", ""]
    lines += ["| task | model | ECE | ECE after temperature scaling |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {m} | {e['ece']:.3f} | {e['ece_calibrated']:.3f} |" for n, m, e in rows]
    return lines


def curve_lines(name: str, result: dict) -> list[str]:
    bands = curve_bands(result["curve"], test_size(result))
    lines = [f"## Label-budget curve: {name} (mean over seeds, 95% band)", ""]
    lines += ["| labels | " + " | ".join(bands) + " |", "|" + " --- |" * (len(bands) + 1)]
    for i, n in enumerate(row[0] for row in next(iter(bands.values()))):
        lines.append(
            f"| {n} | " + " | ".join(f"{b[i][1]:.3f} ({b[i][2]:.3f}-{b[i][3]:.3f})" for b in bands.values()) + " |"
        )
    return lines


def lm_lines(summary: dict) -> list[str]:
    lines = ["## Language model: bits per byte (lower is better)", ""]
    lines += ["| text | bytes | LM | xz -9e | gzip -9 |", "| --- | --- | --- | --- | --- |"]
    for name, m in summary["lm"].items():
        lines.append(
            f"| {name} | {m['bytes']:,} | {m['bits_per_byte']:.3f} | {m['xz_bits_per_byte']:.3f} | {m['gzip_bits_per_byte']:.3f} |"
        )
    return lines


def lm_eval_lines(summary: dict, command: str) -> list[str]:
    """lm-evaluation-harness's figures: beside lmcore's own on each text, and zero-shot accuracy
    with its 95% interval (1.96 standard errors)."""
    judged = summary["lm_eval"]
    if not judged:
        return []
    lines = ["## lm-evaluation-harness (an outside judge of the exported LM)", ""]
    lines += ["| text | bits per byte | lmcore's | byte perplexity | word perplexity |", "|" + " --- |" * 5]
    for name, m in summary["lm"].items():
        if (j := judged.get(f"text_{name}")) is not None:
            lines.append(
                f"| {name} | {j['bits_per_byte']:.3f} | {m['bits_per_byte']:.3f} | {j['byte_perplexity']:.3f}"
                f" | {j['word_perplexity']:,.1f} |"
            )
    lines += ["", "| task (test set), zero-shot | acc (95% CI) | acc_norm |", "| --- | --- | --- |"]
    for task, j in judged.items():
        if task.startswith("zeroshot_"):
            half = 1.96 * j.get("acc_stderr", float("nan"))
            lines.append(
                f"| {task.removeprefix('zeroshot_')} | {j['acc']:.3f} ({j['acc'] - half:.3f}-{j['acc'] + half:.3f}) | {j['acc_norm']:.3f} |"
            )
    return [*lines, "", "By hand:", "", "```", command, "```"]


def text_score(scores: dict, key: str) -> str:
    if f"{key}_ci_low" in scores:
        return f"{scores[key]:.2f} ({scores[f'{key}_ci_low']:.2f}-{scores[f'{key}_ci_high']:.2f})"
    return f"{scores[key]:.3f}" if key.startswith("distinct") else f"{scores[key]:.2f}"


def text_task_lines(summary: dict, text_samples: dict[str, str]) -> list[str]:
    """One table per metric kind: each text-to-text task's test scores beside its baselines',
    and the tasks' first samples."""
    if not summary["text_tasks"]:
        return []
    lines = ["## Text-to-text tasks (test split)"]
    for kind in sorted({e["metric"] for e in summary["text_tasks"].values()}):
        entries = {name: e for name, e in summary["text_tasks"].items() if e["metric"] == kind}
        keys, baselines = HEADLINE[kind], list(next(iter(entries.values()))["baselines"])
        heading = " / ".join(TEXT_HEADINGS[k] for k in keys)
        lines += ["", f"{kind.capitalize()}, 95% bootstrap intervals in brackets:", ""]
        lines += [
            "| task | pairs | " + " | ".join(TEXT_HEADINGS[k] for k in keys) + " | response ppl | "
            + " | ".join(f"{b.replace('_', ' ')}: {heading}" for b in baselines) + " |",
            "|" + " --- |" * (3 + len(keys) + len(baselines)),
        ]  # fmt: skip
        for name, entry in entries.items():
            f = entry["finetuned"]
            cells = [text_score(f, k) for k in keys] + [f"{f['response_perplexity']:.2f}"]
            cells += [" / ".join(text_score(entry["baselines"][b], k) for k in keys) for b in baselines]
            lines.append(f"| {name} | {entry['pairs']:,} | " + " | ".join(cells) + " |")
        paired = [
            f"{name} over {b.replace('_', ' ')}: "
            + ", ".join(f"{TEXT_HEADINGS[m]} {d['diff']:+.2f} ({d['ci_low']:+.2f}, {d['ci_high']:+.2f})" for m, d in e["baselines"][b]["paired"].items())
            for name, e in entries.items() for b in baselines
        ]  # fmt: skip
        lines += ["", "Finetuned minus each baseline, paired bootstrap 95% intervals: " + "; ".join(paired) + "."]
        if kind == "dialogue":
            lines += ["", "The references' own distinct-1 / distinct-2: " + "; ".join(
                f"{n} {e['finetuned']['reference_distinct_1']:.3f} / {e['finetuned']['reference_distinct_2']:.3f}"
                for n, e in entries.items()
            )]  # fmt: skip
    lines += ["", "Bytes per token of the test sources and references (the tokenizer learned the pretraining corpus): "
              + "; ".join(f"{n} {e['bytes_per_token']['sources']:.2f} / {e['bytes_per_token']['references']:.2f}"
                          for n, e in summary["text_tasks"].items())]  # fmt: skip
    signatures = {
        v for e in summary["text_tasks"].values() for k, v in e["finetuned"].items() if k.endswith("_signature")
    }
    lines += ["", "sacreBLEU signatures: " + "; ".join(f"`{s}`" for s in sorted(signatures))]
    for name, text in text_samples.items():
        lines += ["", f"Samples, {name}:", "", "```", text.rstrip("\n"), "```"]
    return lines


def qa_lines(summary: dict, qa_samples: str) -> list[str]:
    """Exact match and F1 of each model on the questions none was trained on, beside the baseline."""
    if not summary["qa"]:
        return []
    qa = summary["qa"]
    lines = [f"## Question answering, never trained on ({qa['questions']:,} questions)", ""]
    lines += ["| model | exact match (95% CI) | F1 (95% CI) |", "| --- | --- | --- |"]
    rows = {**qa["models"], **{f"baseline: {b.replace('_', ' ')}": s for b, s in qa["baselines"].items()}}
    for name, s in rows.items():
        cells = [f"{s[k]:.2f} ({s[f'{k}_ci_low']:.2f}-{s[f'{k}_ci_high']:.2f})" for k in ("exact_match", "f1")]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return [*lines, "", "Samples:", "", "```", qa_samples.rstrip("\n"), "```"]


def data_lines(data_counts: dict) -> list[str]:
    columns = ("read", "repaired_mojibake", "repaired_markup", "quarantined", "duplicates_dropped", "kept")
    lines = ["## Data: repairs and quarantine per source", ""]
    lines += [
        "| source | read | mojibake repaired | markup stripped | quarantined | duplicates | kept |",
        "|" + " --- |" * 7,
    ]
    for source, counts in data_counts.items():
        lines.append(f"| {source} | " + " | ".join(f"{counts.get(c, 0):,}" for c in columns) + " |")
    return lines


def render_report(
    summary: dict,
    results: dict[str, dict],
    data_counts: dict,
    plots: list[str],
    samples: list[str],
    lm_eval_command: str = "",
    text_samples: dict[str, str] | None = None,
    qa_samples: str = "",
) -> str:
    sections = [generality_lines(summary), generalization_lines(summary), calibration_lines(summary)]
    sections += [curve_lines(name, r) for name, r in results.items() if r["curve"]]
    sections += [
        lm_lines(summary),
        lm_eval_lines(summary, lm_eval_command),
        text_task_lines(summary, text_samples or {}),
        qa_lines(summary, qa_samples),
        data_lines(data_counts),
        ["## Plots", ""] + [f"![{p}](plots/{p})" for p in plots],
    ]
    sections.append(["## Samples from the pretrained model", "", "```", *samples, "```"])
    parts = [["# Evaluation report"], *sections]
    return "\n\n".join("\n".join(part) for part in parts if part) + "\n"


def test_size(result: dict) -> int:
    """Examples in a task's test split: the sum of a confusion matrix."""
    return int(np.sum(result["test"]["finetuned"]["confusion_matrix"]))
