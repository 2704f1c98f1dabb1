"""Trains a tiny GPT for the data-parallel test; run under torchrun or alone.

Under torchrun each of the 2 ranks takes micro-batches of 4; alone, one process accumulates 2
micro-batches of 4, the same global batch. The evaluation inside training (LM metrics and class
predictions from the pooled backbone) is split across the ranks; each rank writes how many
windows and texts its model saw during evaluation.

With a checkpoint folder and a rank as further arguments, that rank alone asks to stop during
step 4 (as a signal handler would); every rank must stop at the same step boundary.
"""

import json
import os
import sys

import torch

from lmcore.data import get_batch
from lmcore.evaluate import evaluate_lm, predict_classes
from lmcore.models import SequenceClassifier
from lmcore.train import TrainConfig, TrainingInterrupted, lm_loss, train
from tests.lmcore.helpers import make_labeled, tiny_model, token_stream


def main(out: str, checkpoint_dir: str | None = None, stopping_rank: int | None = None) -> None:
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = tiny_model("gpt")
    torch.manual_seed(1)
    classifier = SequenceClassifier(model, 3)  # shares the backbone being trained
    data = token_stream()
    texts = make_labeled(37, seed=2)  # 5 batches of 8: uneven over 2 ranks
    rows_seen = {"windows": 0, "texts": 0}

    def count_rows(module, inputs, output):
        rows_seen["texts" if isinstance(module, SequenceClassifier) else "windows"] += inputs[0].size(0)

    evaluations = []

    def evaluate(m):
        with model.register_forward_hook(count_rows), classifier.register_forward_hook(count_rows):
            metrics = evaluate_lm(m, data, 16, batch_size=8, num_windows=40)
            _, probs = predict_classes(classifier, texts, pad_id=0, max_len=16, batch_size=8)
        evaluations.append({"lm": metrics, "probs": probs.tolist()})
        return metrics

    config = TrainConfig(
        max_steps=6,
        batch_size=4,
        grad_accum_steps=2 // world_size,
        warmup_steps=2,
        eval_interval=3,
        peak_flops=1e9,
        device="cpu",
    )
    steps_asked = []

    def should_stop() -> bool:
        steps_asked.append(len(steps_asked))
        return rank == stopping_rank and len(steps_asked) == 5  # during step 4

    try:
        train(
            model,
            config,
            lambda g: get_batch(data, 4, 16, g),
            lm_loss,
            evaluate,
            checkpoint_dir=checkpoint_dir,
            should_stop=should_stop,
        )
    except TrainingInterrupted as stop:
        with open(f"{out}.rank{rank}.stopped", "w") as f:
            f.write(str(stop.step))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"evaluations": evaluations, "rows_seen": rows_seen}, f)
    if rank == 0:
        torch.save(model.state_dict(), out)
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3], *[int(a) for a in sys.argv[3:4]])
