"""dreamteacher: pretrain timm backbones by distilling a generative model's features
(DreamTeacher, Li et al., ICCV 2023).

The functions are imported on first use (`dreamteacher.pretrain`), so that the command line's
help and argument errors answer without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dreamteacher.benchmarking import benchmark
from dreamteacher.demo import demo  # (binds the name `demo` to the function, not the module)
from dreamteacher.errors import UserError

__version__ = "0.1.0"
# public name -> the module that defines it
_WHERE = {
    "cache_features": "dreamteacher.api",
    "convert": "dreamteacher.api",
    "export": "dreamteacher.api",
    "finetune": "dreamteacher.api",
    "inspect_teacher": "dreamteacher.api",
    "load_backbone": "dreamteacher.exporting",
    "pretrain": "dreamteacher.api",
    "pretrain_baseline": "dreamteacher.api",
    "probe": "dreamteacher.api",
    "report": "dreamteacher.api",
    "train_ddpm_seg": "dreamteacher.api",
    "train_interpreter": "dreamteacher.api",
    "train_teacher": "dreamteacher.api",
}
__all__ = ["UserError", "benchmark", "demo", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dreamteacher' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
