"""``python -m fastadapt`` (and ``torchrun -m fastadapt``) run the command-line tool."""

from fastadapt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
