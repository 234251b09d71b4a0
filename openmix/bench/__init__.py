"""Benchmark harness: grids of runs (:mod:`openmix.bench.grid`), their execution (:mod:`openmix.bench.runner`) and
the comparison tables and plots (:mod:`openmix.bench.report`)."""

from openmix.bench.grid import Grid, Run, load_grid
from openmix.bench.report import report
from openmix.bench.runner import run_grid

__all__ = ["Grid", "Run", "load_grid", "report", "run_grid"]
