"""Two systems' outputs on one test set compared: system minus baseline in each sacreBLEU score of
a metric kind, with a paired bootstrap 95% interval (pipelines/text_tasks.py's, as the text_task
stage reports against its baselines), and each system's own scores.

    python bench/paired_text.py --kind translation --references outputs/text_tasks/translate_en_de/references.txt \\
        --system lora/hypotheses.txt --baseline full/hypotheses.txt

The hypotheses files are what text_task@<task> writes (one a line, aligned with references.txt);
the MLflow run of each keeps them as artifacts, so two runs of `dvc exp run` can be compared after
the workspace has moved on. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.text_tasks import HEADLINE, kind_scores, paired_differences  # noqa: E402


def read(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(HEADLINE), required=True)
    parser.add_argument("--references", required=True)
    parser.add_argument("--system", required=True, help="hypotheses of the system")
    parser.add_argument("--baseline", required=True, help="hypotheses of the system it is compared with")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    references, system, baseline = read(args.references), read(args.system), read(args.baseline)
    for name, lines in (("--system", system), ("--baseline", baseline)):
        if len(lines) != len(references):
            raise SystemExit(f"{name} has {len(lines)} lines, --references {len(references)}: they must align")
    scores = {
        name: {
            k: v for k, v in kind_scores(lines, references, args.bootstrap, args.kind).items() if "signature" not in k
        }
        for name, lines in (("system", system), ("baseline", baseline))
    }
    differences = paired_differences(system, baseline, references, args.bootstrap, args.kind)
    print(json.dumps({"kind": args.kind, "sentences": len(references), **scores, "system_minus_baseline": differences}))


if __name__ == "__main__":
    main()
