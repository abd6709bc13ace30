#!/usr/bin/env bash
# Quickstart: set up, fetch Omniglot when it is not there yet, meta-train Prototypical Networks on it (about 7
# minutes on 2 CPU cores), then meta-test on 600 episodes of unseen characters, 5-way 1-shot, printing accuracy
# ± 95% CI. Extra arguments go to `fastadapt train` (e.g. --data-dir DIR, --steps 300).
#
# Omniglot is looked for in --data-dir, then $FASTADAPT_DATA, then a shared/data folder beside this checkout,
# then ~/.cache/fastadapt/data; when absent, --download fetches it there (about 16 MB from
# github.com/brendenlake/omniglot, checked against its sha256). Without a network, one line says which two
# files to fetch and where to put them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fastadapt train --algorithm protonet --dataset omniglot --download --ways 5 --shots 1 \
    --steps 1500 --lr-decay-every 500 --out runs/quickstart "$@"
