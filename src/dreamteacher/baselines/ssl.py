"""Self-supervised baselines built from the lightly library's heads, losses and augmentations.

Each method wraps the same `Backbone` the DreamTeacher student uses (so its weights export the
same way) and exposes `views` (lightly's standard two-view augmentation of the method) and
`loss(views, progress)`. Momentum encoders follow a cosine schedule from `momentum` to 1.

- SimCLR (Chen et al. 2020): projection MLP, NT-Xent between the two views' embeddings.
- MoCo v2 (Chen et al. 2020): momentum key encoder, NT-Xent against a queue of past keys.
- BYOL (Grill et al. 2020): online predictor regresses the momentum encoder's projection
  (negative cosine similarity), symmetrised.
- DenseCL (Wang et al. 2021): MoCo v2's global loss plus a dense one: every query location is
  matched to the most similar key location (backbone features) and contrasted per location.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from dreamteacher.defaults import SSL_METHODS
from dreamteacher.errors import UserError
from dreamteacher.student import Backbone

METHODS = SSL_METHODS


def _lightly():
    try:
        import lightly.loss as loss
        import lightly.models.modules as heads
        import lightly.models.utils as utils
        import lightly.transforms as transforms
    except ImportError:
        raise UserError(
            "the SSL baselines need the lightly library; install it with "
            "`pip install -e .[baselines]`"
        ) from None
    return loss, heads, utils, transforms


def momentum_at(progress: float, start: float) -> float:
    """Cosine schedule of the momentum-encoder decay, `start` at progress 0 to 1 at the end."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


class SSLMethod(nn.Module):
    """Backbone + the method's heads. Only `self.backbone` is exported."""

    name = ""

    def __init__(self, backbone: Backbone, image_size: list[int], momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.channels[-1]
        self.size = tuple(int(s) for s in image_size)  # H, W
        self.momentum = momentum

    def pooled(self, x: torch.Tensor, net: Backbone | None = None) -> torch.Tensor:
        return (net or self.backbone)(x)[-1].mean((2, 3))  # B, C5

    def loss(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        """The training loss of two views (# B, 3, H, W each) at `progress` in [0, 1]."""
        return self.loss(views, progress)

    def _momentum_copy(self, *modules: nn.Module) -> list[nn.Module]:
        _, _, utils, _ = _lightly()
        out = []
        for m in modules:
            c = copy.deepcopy(m)
            utils.deactivate_requires_grad(c)
            out.append(c)
        return out

    def _update(self, progress: float, pairs: list[tuple[nn.Module, nn.Module]]) -> None:
        _, _, utils, _ = _lightly()
        m = momentum_at(progress, self.momentum)
        for online, target in pairs:
            utils.update_momentum(online, target, m)


def fp32(criterion, *embeddings: torch.Tensor) -> torch.Tensor:
    """The loss in fp32 outside autocast (its memory bank is kept in fp32)."""
    with torch.autocast(embeddings[0].device.type, enabled=False):
        return criterion(*(e.float() for e in embeddings))


def _queued(temperature: float, size: int):
    """NT-Xent against a queue of `size` past keys (128-d). Under DDP every rank enqueues the
    keys of all ranks (gathered, rank by rank), as MoCo does, so the queues stay one and the
    same; DDP's buffer broadcast from rank 0 would otherwise leave the other ranks' keys out.
    A step's keys beyond the queue's end are dropped (lightly's queue), as in one process:
    DenseCL's per-location keys can outnumber its queue, and then rank 0's come first."""
    loss, _, _, _ = _lightly()
    return loss.NTXentLoss(temperature, memory_bank_size=(size, 128), gather_distributed=True)


class SimCLR(SSLMethod):
    name = "simclr"

    def __init__(self, backbone, image_size, momentum=0.99, temperature=None, memory_bank=0):
        super().__init__(backbone, image_size, momentum)
        loss, heads, _, tr = _lightly()
        self.head = heads.SimCLRProjectionHead(self.dim, self.dim, 128)
        # under DDP the negatives are the whole global batch (gathered with their gradients)
        self.criterion = loss.NTXentLoss(temperature=temperature or 0.5, gather_distributed=True)
        self.views = tr.SimCLRTransform(input_size=self.size, normalize=None)

    def loss(self, views, progress):
        z0 = self.head(self.pooled(views[0]))
        z1 = self.head(self.pooled(views[1]))
        return fp32(self.criterion, z0, z1)


class MoCoV2(SSLMethod):
    name = "mocov2"

    def __init__(self, backbone, image_size, momentum=0.99, temperature=None, memory_bank=4096):
        super().__init__(backbone, image_size, momentum)
        loss, heads, _, tr = _lightly()
        self.head = heads.MoCoProjectionHead(self.dim, self.dim, 128)
        self.backbone_m, self.head_m = self._momentum_copy(self.backbone, self.head)
        self.criterion = _queued(temperature or 0.2, memory_bank)
        self.views = tr.MoCoV2Transform(input_size=self.size, normalize=None)

    def loss(self, views, progress):
        self._update(progress, [(self.backbone, self.backbone_m), (self.head, self.head_m)])
        q = self.head(self.pooled(views[0]))
        with torch.no_grad():
            k = self.head_m(self.pooled(views[1], self.backbone_m))
        return fp32(self.criterion, q, k)


class BYOL(SSLMethod):
    name = "byol"

    def __init__(self, backbone, image_size, momentum=0.99, temperature=None, memory_bank=0):
        super().__init__(backbone, image_size, momentum)
        loss, heads, _, tr = _lightly()
        self.head = heads.BYOLProjectionHead(self.dim, 1024, 256)
        self.predictor = heads.BYOLPredictionHead(256, 1024, 256)
        self.backbone_m, self.head_m = self._momentum_copy(self.backbone, self.head)
        self.criterion = loss.NegativeCosineSimilarity()
        self.views = tr.BYOLTransform(
            view_1_transform=tr.BYOLView1Transform(input_size=self.size, normalize=None),
            view_2_transform=tr.BYOLView2Transform(input_size=self.size, normalize=None),
        )

    def loss(self, views, progress):
        self._update(progress, [(self.backbone, self.backbone_m), (self.head, self.head_m)])
        p0 = self.predictor(self.head(self.pooled(views[0])))
        p1 = self.predictor(self.head(self.pooled(views[1])))
        with torch.no_grad():
            z0 = self.head_m(self.pooled(views[0], self.backbone_m))
            z1 = self.head_m(self.pooled(views[1], self.backbone_m))
        return 0.5 * (fp32(self.criterion, p0, z1) + fp32(self.criterion, p1, z0))


class DenseCL(SSLMethod):
    name = "densecl"

    def __init__(self, backbone, image_size, momentum=0.99, temperature=None, memory_bank=4096):
        super().__init__(backbone, image_size, momentum)
        loss, heads, _, tr = _lightly()
        self.head = heads.MoCoProjectionHead(self.dim, self.dim, 128)
        self.head_local = heads.DenseCLProjectionHead(self.dim, self.dim, 128)
        self.backbone_m, self.head_m, self.head_local_m = self._momentum_copy(
            self.backbone, self.head, self.head_local
        )
        t = temperature or 0.2
        self.criterion = _queued(t, memory_bank)
        self.criterion_local = _queued(t, memory_bank)
        self.views = tr.DenseCLTransform(input_size=self.size, normalize=None)

    def _embed(self, x, net, head, head_local):
        f = net(x)[-1]  # B, C, h, w
        g = head(f.mean((2, 3)))  # B, 128
        f = f.flatten(2).transpose(1, 2)  # B, h*w, C
        return g, head_local(f), f  # global, local # B, h*w, 128, backbone features

    def loss(self, views, progress):
        _, _, utils, _ = _lightly()
        self._update(
            progress,
            [
                (self.backbone, self.backbone_m),
                (self.head, self.head_m),
                (self.head_local, self.head_local_m),
            ],
        )
        qg, ql, qf = self._embed(views[0], self.backbone, self.head, self.head_local)
        with torch.no_grad():
            kg, kl, kf = self._embed(views[1], self.backbone_m, self.head_m, self.head_local_m)
            kl = utils.select_most_similar(qf.detach().float(), kf.float(), kl)  # B, h*w, 128
        dense = fp32(self.criterion_local, ql.flatten(0, 1), kl.flatten(0, 1))
        return 0.5 * (fp32(self.criterion, qg, kg) + dense)


_CLASSES = {c.name: c for c in (SimCLR, MoCoV2, BYOL, DenseCL)}


def build_method(
    method: str,
    backbone: str,
    image_size: list[int],
    *,
    momentum: float = 0.99,
    temperature: float | None = None,
    memory_bank: int = 4096,
) -> SSLMethod:
    if method not in _CLASSES:
        raise UserError(f"unknown baseline method '{method}'; pick one of {', '.join(METHODS)}")
    return _CLASSES[method](
        Backbone(backbone), image_size, momentum, temperature=temperature, memory_bank=memory_bank
    )
