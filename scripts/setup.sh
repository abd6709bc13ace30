#!/usr/bin/env bash
# Create .venv once and install torch==2.13.0 (the CPU wheel) before fastadapt[dev,text]; later runs reuse
# the environment and only reinstall when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.fastadapt-install-stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import fastadapt, torch" 2>/dev/null; then
    echo "setting up .venv (torch==2.13.0, then fastadapt[dev,text]) ..."
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,text]"
    echo "$want" > "$stamp"
fi
