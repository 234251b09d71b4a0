"""Benchmark harness: grids of runs (:mod:`openmix.bench.grid`), their execution here (:mod:`openmix.bench.runner`)
or as scheduler jobs (:mod:`openmix.bench.jobs`; where they stand: :mod:`openmix.bench.status`), and the comparison
tables and plots (:mod:`openmix.bench.report`)."""

from openmix.bench.grid import Grid, Run, load_grid
from openmix.bench.jobs import submit_grid
from openmix.bench.report import report
from openmix.bench.runner import run_grid
from openmix.bench.status import grid_status

__all__ = ["Grid", "Run", "grid_status", "load_grid", "report", "run_grid", "submit_grid"]
