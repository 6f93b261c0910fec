"""Reports a person looks at: an HTML page per run or benchmark folder (runs.py), its figures
(figures.py), and feature maps as colours (pca.py)."""

from dreamteacher.reporting.pca import pca_rgb
from dreamteacher.reporting.runs import (
    EXAMPLES,
    FEATURES,
    REPORT,
    SAMPLES,
    build_report,
    write_report,
)

__all__ = ["EXAMPLES", "FEATURES", "REPORT", "SAMPLES", "build_report", "pca_rgb", "write_report"]
