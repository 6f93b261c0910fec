"""StyleGAN2-ADA network pickles (`network-snapshot-*.pkl`, `ffhq.pkl`, ...) read without
running their code.

Such a pickle rebuilds each network class by executing Python source stored inside it (the
`torch_utils.persistence` mechanism). Here a restricted unpickler resolves only the names
that rebuild plain data (dicts, tensors, storages, numpy scalars); every persistent object is
captured as its class name and state, the stored source is never executed, and any other
global (a function that could run code) is refused with a one-line error. The EMA generator's
tensors are then loaded into the package's own StyleGAN2 (teachers/stylegan.py) with a
strict key match.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamteacher.config import STRIDES
from dreamteacher.errors import UserError
from dreamteacher.teachers.base import register_loader
from dreamteacher.teachers.gan import GANTeacher
from dreamteacher.teachers.stylegan import Generator


class Persistent:
    """A persistent object of the pickle, not rebuilt: its class name and state (the
    module's __dict__: _parameters, _buffers, _modules, _init_kwargs, attributes)."""

    def __init__(self, meta: Any):
        if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
            raise pickle.UnpicklingError("a persistent object without a class record")
        self.class_name = str(meta.get("class_name"))
        self.state = meta["state"] if isinstance(meta["state"], dict) else {}
        self.source = meta.get("module_src", "")  # kept as text, never executed

    def child(self, name: str) -> Persistent | None:
        c = (self.state.get("_modules") or {}).get(name)
        return c if isinstance(c, Persistent) else None


def _load_storage(data: bytes) -> Any:
    """A storage saved by torch.save into the pickle: read with torch's weights-only loader."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# (module, name) -> what it resolves to; nothing else is importable from the pickle
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda: Persistent,
    ("dnnlib.util", "EasyDict"): lambda: dict,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("builtins", "set"): lambda: set,
    ("__builtin__", "set"): lambda: set,
    ("_codecs", "encode"): lambda: __import__("codecs").encode,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): lambda: torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): lambda: _load_storage,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _Refused(Exception):
    pass


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        return _ALLOWED[(module, name)]()

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"a persistent id {str(pid)[:40]}")


def read_network_pickle(file: Path) -> dict[str, Any]:
    """The pickle's top-level dict (G, D, G_ema, ... as Persistent records)."""
    try:
        with open(file, "rb") as f:
            data = SafeUnpickler(f).load()
    except _Refused as e:
        raise UserError(
            f"{file} asks to import {e}, which could run code; refused. Only StyleGAN2-ADA "
            "network pickles are read"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
        raise UserError(
            f"{file} is not a readable network pickle ({why}); download it again"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), Persistent):
        raise UserError(f"{file} holds no G_ema network; pass a StyleGAN2-ADA network pickle")
    return data


def module_tensors(obj: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a captured module: its parameters and buffers, then its children's."""
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for k, v in (obj.state.get(group) or {}).items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v.detach().float().contiguous()
    for k, child in (obj.state.get("_modules") or {}).items():
        if isinstance(child, Persistent):
            out.update(module_tensors(child, prefix + k + "."))
    return out


def generator_settings(g: Persistent, file: Path) -> dict[str, Any]:
    """The package Generator's arguments for the captured G_ema (checked: an unconditional,
    'skip' StyleGAN2)."""
    kw = g.state.get("_init_kwargs") or {}
    syn_obj = g.child("synthesis")
    if syn_obj is None or syn_obj.child("input") is not None:
        raise UserError(
            f"{file} is not a StyleGAN2 generator (a StyleGAN3 one has synthesis.input); "
            "StyleGAN3 pickles are not supported"
        )
    if int(kw.get("c_dim", 0) or 0) > 0:
        raise UserError(f"{file} is class-conditional (c_dim > 0); pass an unconditional one")
    syn = dict(kw.get("synthesis_kwargs") or {}) or kw  # (flat in the stylegan3 repository)
    if syn.get("architecture", "skip") != "skip":
        raise UserError(
            f"{file} uses the '{syn['architecture']}' architecture; only 'skip' is read"
        )
    mapping = g.child("mapping")
    layers = sum(1 for k in (mapping.state.get("_modules") or {}) if k.startswith("fc"))
    first = syn_obj.child("b4")
    conv1 = first.child("conv1") if first is not None else None
    clamp = conv1.state.get("conv_clamp") if conv1 is not None else syn.get("conv_clamp")
    res = int(kw.get("img_resolution", 0))
    return {
        "resolution": [res, res],
        "z_dim": int(kw.get("z_dim", 512)),
        "w_dim": int(kw.get("w_dim", 512)),
        "mapping_layers": layers,
        "channel_base": int(syn.get("channel_base", 32768)),
        "channel_max": int(syn.get("channel_max", 512)),
        "conv_clamp": None if clamp is None else float(clamp),
        "img_channels": int(kw.get("img_channels", 3)),
    }


def load_stylegan_pickle(file: Path) -> Generator:
    """The package's Generator with the pickle's G_ema weights (strict key and shape match),
    in eval mode, frozen."""
    g = read_network_pickle(file)["G_ema"]
    gen = Generator(**generator_settings(g, file))
    state = module_tensors(g)
    own = gen.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shape:
        what = (
            f"lacks {missing[0]}" if missing else f"has an unexpected {extra[0]}" if extra
            else f"has {shape[0]} of shape {tuple(state[shape[0]].shape)}, expected "
            f"{tuple(own[shape[0]].shape)}"
        )  # fmt: skip
        raise UserError(f"{file}: its G_ema {what}; it is not a StyleGAN2-ADA generator")
    gen.load_state_dict(state, strict=True)
    return gen.eval().requires_grad_(False)  # (in training mode w_avg would keep moving)


def _pickles(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.pkl") if p.is_file())


@register_loader(lambda p: len(_pickles(p)) == 1, files=_pickles)
def load_pickle_teacher(
    path: Path, t: Any = None, strides: list[int] = tuple(STRIDES), psi: float = 1.0
) -> GANTeacher:
    """A folder holding one StyleGAN2-ADA network pickle."""
    (file,) = _pickles(path)
    teacher = GANTeacher(load_stylegan_pickle(file), strides, psi)
    teacher.source = f"StyleGAN2 pickle {file}"
    return teacher
