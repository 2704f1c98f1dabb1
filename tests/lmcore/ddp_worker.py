"""Trains a tiny GPT for the data-parallel test; run under torchrun or alone.

Under torchrun each of the 2 ranks takes micro-batches of 4; alone, one process accumulates 2
micro-batches of 4, the same global batch.
"""

import os
import sys

import torch

from lmcore.data import get_batch
from lmcore.train import TrainConfig, lm_loss, train
from tests.lmcore.helpers import tiny_model, token_stream


def main(out: str) -> None:
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = tiny_model("gpt")
    data = token_stream()
    config = TrainConfig(
        max_steps=6, batch_size=4, grad_accum_steps=2 // world_size, warmup_steps=2, peak_flops=1e9, device="cpu"
    )
    train(model, config, lambda g: get_batch(data, 4, 16, g), lm_loss)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(model.state_dict(), out)
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
