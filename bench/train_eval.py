"""Run one meta-training + meta-test job through the CLI and record its wall time.

    python bench/train_eval.py NAME -- fastadapt train ARGS...
    python bench/train_eval.py NAME --stopped -- fastadapt train ARGS...

Writes bench/results/NAME.json with the command, the machine, the training and total wall time, the eval.json of
the run and its validation curve (accuracy against training minutes); docs/results.md is written from these files.

``--stopped``: the run was stopped by hand (Ctrl-C) when its time budget ran out, before its schedule
ended; meta-test the ``best.pt`` it kept with ``fastadapt eval`` (the settings the run's own final test
would have used) and record that, with the last step its metrics logged.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import RESULTS, machine, validation_curve, write_json


def main() -> None:
    name, *rest = sys.argv[1:]
    stopped = rest[0] == "--stopped"
    sep, *command = rest[1:] if stopped else rest
    assert sep == "--", __doc__
    out_dir = Path(command[command.index("--out") + 1])
    started = time.time()
    if stopped:
        meta_test = ["fastadapt", "eval", "--checkpoint", str(out_dir / "best.pt"), "--out", str(out_dir)]
        subprocess.run(meta_test, check=True)
    else:
        subprocess.run(command, check=True)
    total = time.time() - started
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    record = {
        "name": name,
        "command": shlex.join(command),
        **({"last_logged_step": max(r["step"] for r in metrics)} if stopped else {}),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "train_wall_s": max(r.get("elapsed_s", 0) for r in metrics),
        # with --stopped: the meta-test alone
        "total_wall_s": round(total, 1),
        "eval": json.loads((out_dir / "eval.json").read_text()),
        # kept with the record, so that time-to-accuracy plots outlive the run's folder
        "validation_curve": validation_curve(out_dir / "metrics.jsonl"),
    }
    write_json(RESULTS / f"{name}.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
