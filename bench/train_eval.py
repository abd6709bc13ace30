"""Run one meta-training + meta-test job through the CLI and record its wall time.

    python bench/train_eval.py NAME -- fastadapt train ARGS...

Writes bench/results/NAME.json with the command, the machine, the training and total wall time and
the eval.json of the run; docs/RESULTS.md is written from these files.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import RESULTS, machine, write_json


def main() -> None:
    name, sep, *command = sys.argv[1:]
    assert sep == "--", __doc__
    out_dir = Path(command[command.index("--out") + 1])
    started = time.time()
    subprocess.run(command, check=True)
    total = time.time() - started
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    record = {
        "name": name,
        "command": shlex.join(command),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "train_wall_s": max(r.get("elapsed_s", 0) for r in metrics),
        "total_wall_s": round(total, 1),
        "eval": json.loads((out_dir / "eval.json").read_text()),
    }
    write_json(RESULTS / f"{name}.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
