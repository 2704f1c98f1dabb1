"""qa: extractive questions answered by models never trained on them (params.yaml's `qa`).

`python -m pipelines.stages.qa`. The pretrained LM answers zero-shot, each text task's finetuned
model through its prompt/response template (pipelines/qa.py); each gets SQuAD v1.1 exact match
and F1 with bootstrap intervals, beside the best-matching-sentence baseline. Outputs in
outputs/qa/: `predictions/<model>.json` ({question id: answer}, what SQuAD's official
evaluate-v1.1.py reads), `metrics.json`, `samples.txt`.
"""

from __future__ import annotations

import json
import time

from lmcore.checkpoint import load_model
from lmcore.tokenizer import load_tokenizer
from pipelines import tracking
from pipelines.layout import outputs
from pipelines.params import ROOT, load_params, load_raw_params
from pipelines.qa import answer, baseline_scores, qa_scores, read_squad, template_prompts, zero_shot_prompt
from pipelines.stages.common import json_dump, logger, run_stage
from pipelines.stages.sinks import ComputeClock

ZERO_SHOT = "zero_shot"  # the pretrained LM's entry; the others are named by their text task
SAMPLES = 5


def prompt_room(model, settings) -> int:
    """Prompt tokens a model can take: qa.max_len, and within a GPT's context room for the answer."""
    context = model.context_length
    return settings.max_len if context is None else min(settings.max_len, context - settings.max_new_tokens)


def main() -> None:
    params = load_params()
    settings, raw, out, tok = params.qa, load_raw_params(), outputs("qa"), outputs("tokenizer")
    out.predictions.mkdir(parents=True, exist_ok=True)
    models = {ZERO_SHOT: outputs("pretrain").model, **{t: outputs("text_task", t).model for t in params.text_tasks}}
    upstream = {
        "pretrain": outputs("pretrain").dir,
        **{f"text_task@{t}": outputs("text_task", t).dir for t in params.text_tasks},
    }
    with tracking.stage_run("qa", params.tracking.experiment, {"qa": raw["qa"]}, out.dir, upstream):
        clock = ComputeClock()
        questions = read_squad(ROOT / settings.path, settings.questions)
        tokenizer = load_tokenizer(tok.tokenizer, params.tokenizer.eot_token, params.tokenizer.pad_token)
        metrics = {
            "questions": len(questions),
            "models": {},
            "baselines": baseline_scores(questions, params.evaluate.bootstrap_samples),
        }
        samples = {}
        with clock.measure():
            for name, folder in models.items():
                model, _ = load_model(folder)
                room = prompt_room(model, settings)
                if name == ZERO_SHOT:
                    prompts = [zero_shot_prompt(tokenizer, q, room) for q in questions]
                else:
                    prompts = template_prompts(tokenizer, questions, settings.instruction, room)
                start = time.perf_counter()
                predictions = [answer(model, tokenizer, p, settings.max_new_tokens) for p in prompts]
                scores = qa_scores(predictions, questions, params.evaluate.bootstrap_samples)
                metrics["models"][name] = {**scores, "seconds": round(time.perf_counter() - start, 1)}
                path = out.predictions / f"{name}.json"
                path.write_text(
                    json.dumps(
                        {q.id: p for q, p in zip(questions, predictions, strict=True)}, indent=1, ensure_ascii=False
                    )
                )
                samples[name] = predictions[:SAMPLES]
        lines = []
        for i, q in enumerate(questions[:SAMPLES]):
            lines += [f"question: {q.question}", f"gold:     {' | '.join(q.answers)}"]
            lines += [
                f"{name + ':':<{max(map(len, samples)) + 1}} {answers[i]}" for name, answers in samples.items()
            ] + [""]
        out.samples.write_text("\n".join(lines), encoding="utf-8")
        json_dump(out.metrics, metrics)
        tracking.log_metrics(metrics)
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out.metrics, out.samples)
        tracking.log_artifacts(out.predictions)
        logger.info("qa: %s", {name: (m["exact_match"], m["f1"]) for name, m in metrics["models"].items()})


if __name__ == "__main__":
    run_stage(main)
