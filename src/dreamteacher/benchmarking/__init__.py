"""The label-efficient segmentation benchmark: `benchmark()` (run.py) over cached cells
(cells.py), with its settings and profiles (config.py) and report (report.py)."""

from __future__ import annotations

from typing import Any

__all__ = ["benchmark"]


def benchmark(*args: Any, **kwargs: Any) -> Any:
    """Run the benchmark (run.py `benchmark`; imported when called, so that reading the
    settings in config.py imports no torch)."""
    from dreamteacher.benchmarking.run import benchmark as run

    return run(*args, **kwargs)
