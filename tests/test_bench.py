"""The benchmark scripts run end to end, a few steps each, on a small self-made text.

They are how the README's figures are reproduced and how the GPU figures get recorded in a short
lease, so a change to lmcore that breaks them should fail here rather than there.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path, shakespeare_text) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text * 4)  # about 30k characters: 64-character windows in both splits
    return path


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "bench" / script), "--threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    output = "\n" + result.stdout
    return json.loads(output[output.rindex("\n{") + 1 :])


def test_shakespeare_bench_stops_at_the_target_and_writes_its_figures(corpus, tmp_path):
    figures_path = tmp_path / "figures.json"
    result = run_bench(
        "shakespeare.py",
        *("--data", str(corpus), "--preset", "lstm-fast-char", "--steps", "6", "--eval-interval", "2"),
        *("--eval-windows", "8", "--target", "100", "--json", str(figures_path)),
    )
    figures = last_json(result)
    assert figures == json.loads(figures_path.read_text())
    assert figures["target_reached"] and figures["steps"] == 2  # the first evaluation is under 100
    assert figures["time_to_target_s"] > 0 and figures["tokens_per_sec"] > 0
    assert 0 < figures["final_val_loss"] < 100
    # MFU is the recurrent model's 6 FLOPs per weight and token over the measured peak; a bound such
    # as mfu < 1 would fail whenever the peak was measured while another process held the core.
    flops = 6 * figures["params"] * figures["tokens_per_sec"]
    assert figures["mfu"] == pytest.approx(flops / (figures["peak_gflops"] * 1e9), rel=1e-2)
    assert 100 < figures["peak_rss_mb"] < 4096 and figures["peak_cuda_mb"] is None  # torch alone is over 100 MB


def test_gpu_script_arguments_run_on_cpu_with_a_small_model(corpus):
    # bench/gpu.sh's GPT-2-small command, shrunk by --set, which applies after --gpt2-small
    shrink = ["--set", "model.n_layer=1", "--set", "model.n_embd=64", "--set", "model.n_head=2"]
    result = run_bench(
        "shakespeare.py",
        *("--data", str(corpus), "--preset", "gpt-fast-char", "--gpt2-small", *shrink, "--set", "model.block_size=32"),
        *("--steps", "2", "--eval-windows", "4", "--device", "cpu"),
    )
    figures = last_json(result)
    assert figures["device"] == "cpu" and figures["dtype"] == "float32"
    assert figures["params"] < 200_000 and figures["steps"] == 2


def test_shakespeare_bench_names_a_bad_override(corpus):
    result = run_bench("shakespeare.py", "--data", str(corpus), "--set", "n_layer=2")
    assert result.returncode != 0
    assert "--set takes model.KEY=VALUE or train.KEY=VALUE, got 'n_layer=2'" in result.stderr


def test_throughput_ratio_runs_both_programs_on_the_same_recipe(corpus):
    result = run_bench(
        "throughput_ratio.py", "--data", str(corpus), "--rounds", "1", "--steps", "12", "--eval-windows", "8"
    )
    summary = last_json(result)
    assert summary["rounds"] == 1 and summary["steps"] == 12
    assert summary["nanogpt_ms_per_step"] > 0 and summary["lmcore_speedup_median"] > 0
    assert summary["lmcore_relu2_speedup_median"] > 0
    # the same model, init scheme and schedule: after 12 steps both are near ln(vocabulary)
    assert abs(summary["nanogpt_val_loss"] - summary["lmcore_val_loss"]) < 0.5


def test_shakespeare_bench_takes_a_bare_string_override(corpus):
    # a bare word is a string (as `dvc exp run -S` reads it), checked by the model config
    result = run_bench("shakespeare.py", "--data", str(corpus), "--steps", "1", "--set", "model.mlp=relu3")
    assert result.returncode != 0
    assert "config key 'model.mlp' must be one of ['gelu', 'swiglu', 'relu2'], got 'relu3'" in result.stderr


def test_targets_read_a_summary_and_say_met_missed_or_unproven(tmp_path):
    """A curve target needs its margin and an interval above 0; at one seed it cannot be proven."""

    def point(labels, seed, model, accuracy):
        return {"labels": labels, "seed": seed, "model": model, "accuracy": accuracy}

    curve = [point(100, s, "finetuned", 0.80 + 0.01 * s) for s in range(3)]
    curve += [point(100, s, "scratch", 0.60 + 0.01 * s) for s in range(3)]  # +0.20 every seed: met
    curve += [point(100, s, "tfidf", 0.78 + 0.01 * s) for s in range(3)]  # +0.02: missed by 0.03
    curve += [point(1000, 0, "finetuned", 0.9), point(1000, 0, "scratch", 0.7), point(1000, 0, "tfidf", 0.7)]
    pair = {"diff": 0.01, "ci_low": -0.01, "ci_high": 0.03}
    tasks = {t: {"finetuned": {"accuracy": a}} for t, a in (("sst2", 0.86), ("imdb", 0.90))}
    summary = {
        "curves": {"sst2": curve},
        "tasks": tasks,
        "paired": {t: {"scratch": pair, "tfidf": {**pair, "ci_low": 0.001}} for t in ("sst2", "imdb", "trec")},
        "lm": {"imdb": {"bits_per_byte": 1.25}},
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    command = [sys.executable, str(ROOT / "bench/targets.py"), "--summary", str(path), "--json", "--noop-seconds", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    verdicts = {row["target"]: row["verdict"] for row in json.loads(result.stdout)["targets"]}
    assert verdicts["sst2 100 labels: finetuned - scratch >= +0.10, CI > 0"] == "met"
    assert verdicts["sst2 100 labels: finetuned - tfidf >= +0.05, CI > 0"] == "missed by 0.030"
    assert verdicts["sst2 1000 labels: finetuned - scratch >= +0.10, CI > 0"].startswith("unproven")
    assert verdicts["imdb 100 labels: finetuned - scratch >= +0.10, CI > 0"] == "missing"
    assert verdicts["finetuned beats TF-IDF (CI > 0) on >= 4 of 5 tasks"] == "missed by 1 task(s)"
    assert verdicts["sst2 finetuned test accuracy >= 0.85"] == "met"
    assert verdicts["imdb finetuned test accuracy >= 0.91"] == "missed by 0.010"
    assert verdicts["LM bits/byte on held-out IMDb <= 1.3"] == "met"
    assert verdicts["no-op dvc repro <= 3 s"] == "missed by 1s"
    assert verdicts["default dvc repro from nothing <= 20 min"] == "not measured here"


def test_translation_bench_trains_decodes_and_scores(tmp_path):
    """bench/translation.py in a throwaway project: a tiny pretrained LSTM, a character tokenizer and
    a few Multi30k-shaped lines; full finetuning and LoRA, greedy and beam decoding."""
    import gzip

    from lmcore.checkpoint import export_model
    from lmcore.tokenizer import TokenizerConfig, train_tokenizer
    from pipelines.layout import outputs
    from tests.lmcore.helpers import TINY, tiny_model

    english = ["a dog runs", "two men sit", "a girl sings", "the cat sleeps"] * 5
    german = ["ein Hund rennt", "zwei Männer sitzen", "ein Mädchen singt", "die Katze schläft"] * 5
    tokenizer = train_tokenizer(
        english + german + ["Translate English to German: ### Response:"], TokenizerConfig(kind="char")
    )
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # where the outputs are
    tokenizer_out, model_out = outputs("tokenizer", root=tmp_path), outputs("pretrain", root=tmp_path)
    tokenizer_out.dir.mkdir(parents=True)
    tokenizer.save(tokenizer_out.tokenizer)
    config = {**TINY["lstm"], "vocab_size": tokenizer.vocab_size}
    export_model(
        model_out.model, tiny_model("lstm", vocab_size=tokenizer.vocab_size), "lstm", config, tokenizer_out.tokenizer
    )
    (tmp_path / "data" / "multi30k").mkdir(parents=True)
    for split in ("train", "val"):
        for language, lines in (("en", english), ("de", german)):
            with gzip.open(tmp_path / "data" / "multi30k" / f"{split}.{language}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # --scratch-arch's shapes
    for extra in ([], ["--lora-rank", "2", "--beam-size", "2", "--hypotheses", "runs"], ["--scratch-arch", "gpt"]):
        command = [sys.executable, str(ROOT / "bench" / "translation.py"), "--steps", "3", "--max-len", "64", *extra]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                                env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        row = last_json(result)
        assert row["sentences"] == 20 and 0 <= row["greedy"]["bleu"] <= 100 and row["greedy"]["chrf"] >= 0
        assert row["greedy"]["bleu_signature"].startswith("nrefs:1|")
        lora = "--lora-rank" in extra
        assert (row["trainable"] < row["parameters"]) == lora and ("beam2" in row) == lora
        assert row["scratch"] == ("gpt" if "--scratch-arch" in extra else False)
    assert [len((tmp_path / "runs" / f"val.{n}.txt").read_text().splitlines()) for n in ("greedy", "beam2")] == [20, 20]


def test_paired_text_compares_two_systems_on_one_test_set(tmp_path):
    references = ["ein Hund läuft über die grüne Wiese", "zwei Männer spielen Fußball im Park"] * 5
    (tmp_path / "refs.txt").write_text("\n".join(references) + "\n")
    (tmp_path / "good.txt").write_text("\n".join(references) + "\n")
    (tmp_path / "bad.txt").write_text("\n".join(["ein Mann in einem blauen Hemd"] * 10) + "\n")
    command = [sys.executable, str(ROOT / "bench" / "paired_text.py"), "--kind", "translation"]
    command += ["--references", str(tmp_path / "refs.txt"), "--bootstrap", "100"]
    result = subprocess.run(
        [*command, "--system", str(tmp_path / "good.txt"), "--baseline", str(tmp_path / "bad.txt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    figures = last_json(result)
    gain = figures["system_minus_baseline"]["bleu"]
    assert figures["system"]["bleu"] == pytest.approx(100.0)
    assert gain["diff"] == pytest.approx(figures["system"]["bleu"] - figures["baseline"]["bleu"], abs=0.011)
    assert 0 < gain["ci_low"] <= gain["diff"] <= gain["ci_high"]
    (tmp_path / "short.txt").write_text("one line\n")
    short = subprocess.run(
        [*command, "--system", str(tmp_path / "short.txt"), "--baseline", str(tmp_path / "bad.txt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert short.returncode != 0 and "--system has 1 lines, --references 10" in short.stderr
