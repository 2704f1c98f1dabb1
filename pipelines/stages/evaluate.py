"""evaluate: held-out LM metrics, out-of-domain LM metrics, classification against baselines.

Language model (pretrained): loss, perplexity, bits per byte and top-1/top-5 accuracy on the
pretraining test split and on the labeled test texts (out of domain). Classification on the
labeled test split (SST-2 dev): the finetuned model, the from-scratch baseline, TF-IDF +
logistic regression and the majority class, each with a bootstrap 95% interval, and the paired
difference between the finetuned model and each baseline. Plus samples, a report and plots.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lmcore.checkpoint import load_model  # noqa: E402
from lmcore.data import load_labeled  # noqa: E402
from lmcore.evaluate import bootstrap_accuracy, classification_metrics, predict_classes  # noqa: E402
from lmcore.generate import generate  # noqa: E402
from lmcore.models import SequenceClassifier  # noqa: E402
from lmcore.tokenizer import load_tokenizer  # noqa: E402
from pipelines import tracking  # noqa: E402
from pipelines.corpus import json_dump  # noqa: E402
from pipelines.params import Params, load_params, load_raw_params  # noqa: E402
from pipelines.stages.common import ComputeClock, lm_evaluator, logger, run_stage, stage_dir  # noqa: E402


def lm_metrics(model, params: Params, tokenizer_sha: str) -> dict:
    block_size = model.config.block_size
    streams = {"test": "pretrain_test", "out_of_domain": "labeled_test"}
    return {name: lm_evaluator(stream, tokenizer_sha, block_size, params)(model) for name, stream in streams.items()}


def tfidf_predictions(ingested: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """TF-IDF unigrams + logistic regression trained on the labeled train split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    table = pd.read_parquet(ingested / "labeled.parquet", columns=["text", "label", "split"])
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(max_iter=1000, C=4.0)
    classifier.fit(vectorizer.fit_transform(train["text"]), train["label"].map(labels.index))
    return classifier.predict(vectorizer.transform(test["text"])), train["label"].map(labels.index).to_numpy()


def sample_texts(lm, tokenizer, s) -> list[str]:
    samples = []
    for i, prompt in enumerate(s.prompts):
        prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        ids = generate(lm, prompt_ids, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed + i, tokenizer.eot_id)
        samples.append(f"--- prompt {prompt!r}\n{prompt}{tokenizer.decode(ids)}\n")
    return samples


def classification_results(params: Params, pad_id: int) -> dict:
    """Every classifier on the labeled test split, with intervals and paired differences."""
    test_set = load_labeled(stage_dir("tokenizer") / "streams" / "labeled_test.npz")
    y_true = np.asarray(test_set.labels)
    num_classes = len(params.ingest.labeled.labels)
    predictions: dict[str, np.ndarray] = {}
    for name in ("finetuned", "scratch"):
        path = stage_dir("finetune") / "models" / name
        if path.exists():
            model, config = load_model(path)
            if isinstance(model, SequenceClassifier):
                predictions[name], _ = predict_classes(
                    model, test_set, pad_id, config["max_len"], params.evaluate.batch_size
                )
    tfidf, train_labels = tfidf_predictions(stage_dir("ingest"), params.ingest.labeled.labels)
    if params.evaluate.tfidf_baseline:
        predictions["tfidf_logreg"] = tfidf
    predictions["majority"] = np.full_like(y_true, np.bincount(train_labels, minlength=num_classes).argmax())

    results = {}
    samples_n = params.evaluate.bootstrap_samples
    reference = (predictions["finetuned"] == y_true) if "finetuned" in predictions else None
    for name, predicted in predictions.items():
        correct = predicted == y_true
        entry = {
            **classification_metrics(y_true, predicted, num_classes),
            **bootstrap_accuracy(correct, None, samples_n),
        }
        if reference is not None and name != "finetuned":
            paired = bootstrap_accuracy(reference, correct, samples_n)
            entry.update(
                finetuned_minus_this=paired["diff"],
                diff_ci_low=paired["diff_ci_low"],
                diff_ci_high=paired["diff_ci_high"],
            )
        results[name] = entry
    return results


def plot_curves(out: Path) -> Path | None:
    curve_path = stage_dir("pretrain") / "curve.tsv"
    if not curve_path.exists():
        return None
    curve = pd.read_csv(curve_path, sep="\t")
    figure, axis = plt.subplots(figsize=(6, 4))
    for column in ("train/loss", "val/loss"):
        if column in curve:
            part = curve[["step", column]].dropna()
            axis.plot(part["step"], part[column], label=column, marker="o" if column.startswith("val") else None)
    axis.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="Pretraining loss")
    axis.legend()
    figure.tight_layout()
    path = out / "plots" / "pretrain_loss.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_accuracies(results: dict, out: Path) -> Path:
    names = list(results)
    figure, axis = plt.subplots(figsize=(6, 4))
    accuracy = [results[n]["accuracy"] for n in names]
    low = [results[n]["accuracy"] - results[n]["ci_low"] for n in names]
    high = [results[n]["ci_high"] - results[n]["accuracy"] for n in names]
    axis.bar(names, accuracy, yerr=[low, high], capsize=6, color="#4c78a8")
    axis.set(ylim=(0, 1), ylabel="accuracy (95% bootstrap CI)", title="Classification, labeled test split")
    figure.tight_layout()
    path = out / "plots" / "classification_accuracy.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    params = load_params()
    tok_dir, pre_dir, ft_dir, out = (
        stage_dir("tokenizer"),
        stage_dir("pretrain"),
        stage_dir("finetune"),
        stage_dir("evaluate"),
    )
    (out / "plots").mkdir(parents=True, exist_ok=True)
    upstream = {"pretrain": pre_dir, "finetune": ft_dir}
    with tracking.stage_run(
        "evaluate", params.tracking.experiment, {"evaluate": load_raw_params()["evaluate"]}, out, upstream
    ):
        clock = ComputeClock()
        with clock.measure():
            tokenizer = load_tokenizer(
                tok_dir / "tokenizer.json", params.tokenizer.eot_token, params.tokenizer.pad_token
            )
            lm, _ = load_model(pre_dir / "model")
            metrics: dict = {"lm": lm_metrics(lm, params, tokenizer.sha256())}
            samples = sample_texts(lm, tokenizer, params.evaluate.samples)
            classification = classification_results(params, tokenizer.pad_id)
        (out / "samples.txt").write_text("\n".join(samples))
        metrics["classification"] = classification
        json_dump(
            out / "metrics.json",
            {
                **metrics,
                "classification": {
                    k: {m: v for m, v in r.items() if m != "confusion_matrix"} for k, r in classification.items()
                },
            },
        )
        json_dump(out / "confusion_matrices.json", {k: r["confusion_matrix"] for k, r in classification.items()})

        plots = [p for p in (plot_curves(out), plot_accuracies(classification, out)) if p is not None]
        report = render_report(metrics, params, samples, [p.name for p in plots])
        (out / "report.md").write_text(report)
        tracking.log_metrics(metrics)
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(
            out / "metrics.json", out / "report.md", out / "samples.txt", out / "confusion_matrices.json"
        )
        tracking.log_artifacts(out / "plots")
        logger.info("evaluation:\n%s", report)


def render_report(metrics: dict, params: Params, samples: list[str], plots: list[str]) -> str:
    lines = [
        "# Evaluation report",
        "",
        "## Language model (pretrained)",
        "",
        "| data | loss | perplexity | bits/byte | top-1 | top-5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in metrics["lm"].items():
        lines.append(
            f"| {name} | {m['loss']:.4f} | {m['perplexity']:.2f} | {m['bits_per_byte']:.4f} | {m['top1_accuracy']:.4f} | {m['top5_accuracy']:.4f} |"
        )
    lines += [
        "",
        "## Classification (labeled test split)",
        "",
        "| model | accuracy | 95% CI | macro-F1 | finetuned minus this (95% CI) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in metrics["classification"].items():
        diff = (
            f"{m['finetuned_minus_this']:+.4f} ({m['diff_ci_low']:+.4f}, {m['diff_ci_high']:+.4f})"
            if "finetuned_minus_this" in m
            else "-"
        )
        lines.append(
            f"| {name} | {m['accuracy']:.4f} | {m['ci_low']:.4f}-{m['ci_high']:.4f} | {m['macro_f1']:.4f} | {diff} |"
        )
    lines += ["", "Label order: " + ", ".join(params.ingest.labeled.label_names), ""]
    for name, m in metrics["classification"].items():
        lines.append(f"- confusion matrix {name} (rows true, columns predicted): {m['confusion_matrix']}")
    lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    lines += ["", "## Samples", "", "```", *samples, "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_stage(main)
