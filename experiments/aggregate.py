"""`python -m experiments.aggregate` is kept as a short alias of `python -m experiments.analysis.aggregate`."""

from experiments.analysis.aggregate import main

if __name__ == "__main__":
    raise SystemExit(main())
