"""Collect the extra evaluations of benchmark checkpoints into bench/results/evals.json.

Each ``runs/bench/RUN/eval_*/eval.json`` was written by
``fastadapt eval --checkpoint runs/bench/RUN/best.pt --ways N --shots K --quiet --out runs/bench/RUN/eval_NwKs``;
the record keeps that command beside the result so docs/results.md can cite it.

    python bench/record_evals.py
"""

from __future__ import annotations

import json

from common import RESULTS, ROOT, write_json


def main() -> None:
    records = []
    for path in sorted((ROOT / "runs" / "bench").glob("*/eval_*/eval.json")):
        result = json.loads(path.read_text())
        run, out = path.parent.parent.name, path.parent.relative_to(ROOT)
        command = (
            f"fastadapt eval --checkpoint runs/bench/{run}/best.pt --ways {result['ways']} "
            f"--shots {result['shots']} --quiet --out {out}"
        )
        records.append({"run": run, "command": command, "eval": result})
    target = RESULTS / "evals.json"
    write_json(target, records)
    print(f"{len(records)} evaluations -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
