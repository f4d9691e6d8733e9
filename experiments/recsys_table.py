"""`python -m experiments.recsys_table` is kept as a short alias of `python -m experiments.tasks.recsys.table`."""

from experiments.tasks.recsys.table import main

if __name__ == "__main__":
    raise SystemExit(main())
