"""The label-efficient segmentation benchmark: `benchmark()` (run.py) over cached cells
(cells.py), with its settings and profiles (config.py) and report (report.py)."""

from dreamteacher.benchmarking.run import benchmark

__all__ = ["benchmark"]
