#!/usr/bin/env bash
# Train MAML and the pretrained baseline on one environment, then evaluate (Figure 5). Resumable: rerun it.
# Usage: bash bench/maml_rl_all.sh navigation-2d [iterations]   (inside /work/bin/bench-slot for long runs)
set -euo pipefail
env=$1
iterations=${2:-}
runs=runs/rl/$env
extra=()
if [ -n "$iterations" ]; then extra=(--iterations "$iterations"); fi
.venv/bin/python bench/maml_rl.py train --env "$env" --method maml --out "$runs/maml" "${extra[@]}"
.venv/bin/python bench/maml_rl.py train --env "$env" --method pretrained --out "$runs/pretrained" "${extra[@]}"
.venv/bin/python bench/maml_rl.py eval --env "$env" --runs "$runs" \
    --json "bench/results/maml_rl_$env.json" --png "docs/img/maml_rl_$env.png"
