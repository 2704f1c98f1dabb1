"""lmcore against nanoGPT's recipe, interleaved: the step-time ratio measured within each round.

A shared 2-core machine drifts by up to 30% from hour to hour, so runs from different times do
not compare. Each round here runs the nanoGPT re-implementation and lmcore on the same recipe
(nanogpt-char preset, the first --steps steps of its 2000-step schedule) back to back, and the
figure is the median over rounds of the per-round speed-up (reference ms/step / lmcore ms/step).

  python bench/throughput_ratio.py --rounds 5 --threads 2
  python bench/throughput_ratio.py --rounds 5 --threads 2 --ddp   # also 2 ranks x 1 thread

With more than one thread, lmcore runs nanoGPT's exact recipe twice: with torch's intra-op
threads (`lmcore`), and with each batch split by rows over that many threads of one intra-op
thread each (`lmcore_batch_threads`, train.batch_threads). `lmcore_relu2` is the same shape and
schedule with lmcore's relu^2 MLP in place of GELU (preset nanogpt-char-relu2), split the same
way. With --ddp, lmcore also runs as two data-parallel ranks of one thread each under torchrun
(global batch unchanged), the third way to put two cores to work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run_json(command: list[str]) -> dict:
    """Run a benchmark command and parse the JSON object it prints last."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    output = "\n" + result.stdout
    return json.loads(output[output.rindex("\n{") + 1 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp", action="store_true", help="also run lmcore as 2 ranks x 1 thread under torchrun")
    parser.add_argument("--eval-windows", type=int, default=400)
    parser.add_argument("--data", type=Path, default=BENCH.parent / "data/tinyshakespeare/input.txt")
    args = parser.parse_args()

    shared_args = ["--data", str(args.data), "--eval-windows", str(args.eval_windows)]
    steps = ["--steps", str(args.steps)]
    lmcore_base = [str(BENCH / "shakespeare.py"), *shared_args, "--set", f"train.max_steps={args.steps}"]
    lmcore = [*lmcore_base, "--preset", "nanogpt-char"]
    lmcore_relu2 = [*lmcore_base, "--preset", "nanogpt-char-relu2"]
    commands = {
        "nanogpt": [
            sys.executable,
            str(BENCH / "nanogpt_reference.py"),
            *shared_args,
            *steps,
            "--threads",
            str(args.threads),
        ],
        "lmcore": [sys.executable, *lmcore, "--threads", str(args.threads)],
    }
    split = ["--set", f"train.batch_threads={args.threads}"]
    if args.threads > 1:
        commands["lmcore_batch_threads"] = [sys.executable, *lmcore, *split, "--threads", str(args.threads)]
    commands["lmcore_relu2"] = [sys.executable, *lmcore_relu2, *split, "--threads", str(args.threads)]
    if args.ddp:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        commands["lmcore_ddp"] = [*torchrun, *lmcore, "--threads", "1"]
    rows: list[dict[str, dict]] = []
    for round_index in range(args.rounds):
        rows.append({name: run_json(command) for name, command in commands.items()})
        line = "  ".join(f"{name} {row['ms_per_step']:6.2f} ms" for name, row in rows[-1].items())
        print(f"round {round_index + 1}: {line}", flush=True)

    summary = {"threads": args.threads, "steps": args.steps, "rounds": args.rounds}
    for name in commands:
        summary[f"{name}_ms_per_step"] = round(statistics.median(r[name]["ms_per_step"] for r in rows), 2)
        summary[f"{name}_val_loss"] = round(statistics.median(r[name]["final_val_loss"] for r in rows), 4)
        if name != "nanogpt":
            ratios = [r["nanogpt"]["ms_per_step"] / r[name]["ms_per_step"] for r in rows]
            summary[f"{name}_speedup_median"] = round(statistics.median(ratios), 3)
            summary[f"{name}_speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
