"""Teachers: generative models read as multi-scale feature extractors (docs/method.md,
"Teacher")."""

from dreamteacher.teachers import adm as _adm  # noqa: F401  (registers its loader)
from dreamteacher.teachers import diffusion as _diffusion  # noqa: F401  (registers entries)
from dreamteacher.teachers import gan as _gan  # noqa: F401  (registers an entry and a loader)
from dreamteacher.teachers import latent as _latent  # noqa: F401  (registers its loader)
from dreamteacher.teachers import stylegan_pkl as _pkl  # noqa: F401  (registers its loader)
from dreamteacher.teachers.base import (
    Teacher,
    create_teacher,
    list_teachers,
    load_teacher,
    register_teacher,
    resolve_teacher,
    teacher_files,
)
from dreamteacher.teachers.diffusion import PRESETS, DiffusionTeacher, build_unet

__all__ = [
    "PRESETS",
    "DiffusionTeacher",
    "Teacher",
    "build_unet",
    "create_teacher",
    "list_teachers",
    "load_teacher",
    "register_teacher",
    "resolve_teacher",
    "teacher_files",
]
