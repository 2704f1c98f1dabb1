"""evaluate: the language model against compressors, every task's results, one summary.

Language model (pretrained): bits per byte (and loss, perplexity, top-1/top-5) on each text of
`evaluate.lm_texts` (the corpus's held-out split, and texts from other domains), beside `xz -9e`
and `gzip -9` on the very same bytes. Classification: the `finetune@<task>` results gathered into
a generality table (a row per task, plus the mean), the out-of-domain scores and the label-budget
curves. Writes `summary.json` (schema in pipelines/report.py), `report.md`, `plots/`,
`samples.txt` and `metrics.json` (for `dvc metrics`). lm-evaluation-harness, an outside judge,
scores the exported LM on the same texts and zero-shot on the tasks (pipelines/lm_eval_tasks.py).
"""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pandas as pd

from lmcore.checkpoint import load_model
from lmcore.data import load_token_stream
from lmcore.evaluate import evaluate_lm
from lmcore.generate import generate
from lmcore.runtime import resolve_device
from lmcore.tokenizer import TextTokenizer, load_tokenizer
from pipelines import tracking
from pipelines.layout import StageOutputs, outputs
from pipelines.lm_eval_tasks import command_line, run_lm_eval, write_tasks
from pipelines.params import ROOT, Params, load_params, load_raw_params
from pipelines.report import build_summary, plot_curve, plot_generality, render_report, test_size
from pipelines.stages.common import json_dump, logger, run_stage
from pipelines.stages.sinks import ComputeClock
from pipelines.stages.tokenizer import split_texts
from pipelines.text_tasks import HEADLINE


def lm_text_bytes(source: str) -> bytes:
    """The bytes a `lm_texts` entry names: `corpus` (its test split's documents, each ended by a
    newline) or a UTF-8 file."""
    if source == "corpus":
        return "".join(f"{text}\n" for text in split_texts(outputs("ingest").corpus, "test")).encode()
    path = ROOT / source
    if not path.is_file():
        raise ValueError(f"evaluate.lm_texts names {source}, which is not a file")
    return path.read_bytes()


def lm_scores(lm, tokenizer: TextTokenizer, params: Params) -> dict[str, dict]:
    """Bits per byte of the LM and of two compressors on each text (every window when lm_text_windows is 0)."""
    scores = {}
    block = lm.config.block_size
    for name, source in params.evaluate.lm_texts.items():
        raw = lm_text_bytes(source)
        if source == "corpus":
            ids, meta = load_token_stream(outputs("tokenizer").streams / "corpus_test.bin")
            bytes_per_token = meta.bytes_per_token
        else:
            ids = tokenizer.encode_to_array(raw.decode("utf-8"))
            bytes_per_token = len(raw) / len(ids)
        metrics = evaluate_lm(
            lm, ids, block, params.evaluate.batch_size, params.evaluate.lm_text_windows, bytes_per_token
        )
        scores[name] = {
            **metrics,
            "bytes": len(raw),
            "xz_bits_per_byte": 8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw),
            "gzip_bits_per_byte": 8 * len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw),
        }
    return scores


def lm_eval_scores(params: Params, block_size: int) -> tuple[dict[str, dict], str]:
    """lm-evaluation-harness on the exported LM (outputs/export/lm): its figures per task, and the
    command that gives them by hand. The task files and their data go to outputs/evaluate/lm_eval."""
    if not params.evaluate.lm_eval.enabled:
        return {}, ""
    folder, model_dir = outputs("evaluate").lm_eval, outputs("export").lm
    corpus = list(split_texts(outputs("ingest").corpus, "test"))
    names = write_tasks(params, folder, corpus, outputs("tasks").dir)
    device = str(resolve_device(params.pretrain.device))
    scores = run_lm_eval(model_dir, folder, names, block_size, device, params.evaluate.lm_eval)
    return scores, command_line(model_dir, folder, names, block_size)


def sample_texts(lm, tokenizer, s) -> list[str]:
    samples = []
    for i, prompt in enumerate(s.prompts):
        prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
        ids = generate(lm, prompt_ids, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed + i, tokenizer.eot_id)
        samples.append(f"--- prompt {prompt!r}\n{prompt}{tokenizer.decode(ids)}\n")
    return samples


def data_counts(params: Params) -> dict[str, dict]:
    """Per source: read, repaired, quarantined, duplicates, kept (the corpus's and every task's)."""
    counts = dict(json.loads(outputs("ingest").stats.read_text())["sources"])
    for name in params.tasks:
        counts.update(json.loads(outputs("tasks", name).stats.read_text())["sources"])
    return counts


def plot_pretraining(out: StageOutputs) -> Path | None:
    import matplotlib.pyplot as plt

    curve = pd.read_csv(outputs("pretrain").curve, sep="\t")
    figure, axis = plt.subplots(figsize=(6, 4))
    for column in ("train/loss", "val/loss"):
        if column in curve:
            part = curve[["step", column]].dropna()
            axis.plot(part["step"], part[column], label=column, marker="o" if column.startswith("val") else None)
    axis.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="Pretraining loss")
    axis.legend()
    figure.tight_layout()
    path = out.plots / "pretrain_loss.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    params = load_params()
    pretrained, out = outputs("pretrain"), outputs("evaluate")
    out.plots.mkdir(parents=True, exist_ok=True)
    upstream = {"pretrain": pretrained.dir, **{f"finetune@{t}": outputs("finetune", t).dir for t in params.tasks}}
    upstream |= {f"text_task@{t}": outputs("text_task", t).dir for t in params.text_tasks}
    upstream["qa"] = outputs("qa").dir
    raw = load_raw_params()
    with tracking.stage_run("evaluate", params.tracking.experiment, {"evaluate": raw["evaluate"]}, out.dir, upstream):
        clock = ComputeClock()
        with clock.measure():
            tokenizer = load_tokenizer(
                outputs("tokenizer").tokenizer, params.tokenizer.eot_token, params.tokenizer.pad_token
            )
            lm, _ = load_model(pretrained.model)
            lm_results = lm_scores(lm, tokenizer, params)
            samples = sample_texts(lm, tokenizer, params.evaluate.samples)
            judged, judge_command = lm_eval_scores(params, lm.config.block_size)
        results = {name: json.loads(outputs("finetune", name).results.read_text()) for name in params.tasks}
        text_results = {name: json.loads(outputs("text_task", name).metrics.read_text()) for name in params.text_tasks}
        text_samples = {name: outputs("text_task", name).samples.read_text() for name in params.text_tasks}
        qa = outputs("qa")
        qa_results = json.loads(qa.metrics.read_text())
        qa_results["models"] = {
            m: {k: v for k, v in s.items() if k != "seconds"} for m, s in qa_results["models"].items()
        }
        summary = build_summary(
            results,
            {
                k: {m: v[m] for m in ("bits_per_byte", "xz_bits_per_byte", "gzip_bits_per_byte", "bytes")}
                for k, v in lm_results.items()
            },
            judged,
            text_results,
            qa_results,
        )
        plots = [plot_pretraining(out), plot_generality(summary, out.plots / "generality.png")]
        plots += [
            plot_curve(name, r["curve"], test_size(r), out.plots / f"curve_{name}.png")
            for name, r in results.items()
            if r["curve"]
        ]
        json_dump(out.summary, summary)
        metrics = {
            "lm": lm_results,
            "lm_eval": judged,
            "tasks_mean": summary["tasks_mean"],
            "tasks": {t: {m: e["accuracy"] for m, e in s.items()} for t, s in summary["tasks"].items()},
            "text_tasks": {
                t: {m: e["finetuned"][m] for m in HEADLINE[e["metric"]]} for t, e in summary["text_tasks"].items()
            },
            "qa": {m: {k: s[k] for k in ("exact_match", "f1")} for m, s in summary["qa"]["models"].items()},
        }
        json_dump(out.metrics, metrics)
        out.samples.write_text("\n".join(samples))
        report = render_report(
            summary, results, data_counts(params), [p.name for p in plots], samples, judge_command, text_samples,
            qa.samples.read_text(encoding="utf-8"),
        )  # fmt: skip
        out.report.write_text(report)
        tracking.log_metrics(metrics)
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out.summary, out.metrics, out.report, out.samples)
        tracking.log_artifacts(out.plots)
        tracking.log_artifacts(*sorted(out.lm_eval.glob("*.yaml")), artifact_path="lm_eval")
        logger.info(
            "evaluation: mean test accuracy %s; LM %s",
            summary["tasks_mean"],
            {k: round(v["bits_per_byte"], 3) for k, v in lm_results.items()},
        )


if __name__ == "__main__":
    run_stage(main)
