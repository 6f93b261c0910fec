"""What label distillation's logit head costs: a pretrain step per mode and logit head.

    python bench/logit_head.py [--device cpu|cuda] [--quick] [--out FILE.json]

Each variant is the student's side of a pretrain step, through the functions the pretrain loop
uses (engine/loop.py forward_backward over pretrain's distill_losses, with precomputed teacher
targets, so the teacher's pass, the same for every variant, is left out) plus the AdamW step:
`feature` (no logit head), then `mix` and `label` with each logit head (`uper`: UPerNet's 3x3
fusion at stride 4; `light`: its 1x1 version computed per level). The soft labels come from a
real feature interpreter on the targets, inside the step as in pretraining. Variants are timed
in interleaved rounds, so a drift of the machine's speed hits all alike. Also counts each
head's forward MACs per image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from throughput import _time_interleaved, device_label  # bench/ is the script's folder
from torch.utils.flop_counter import FlopCounterMode

from dreamteacher.config import LOGIT_HEADS
from dreamteacher.engine.loop import forward_backward
from dreamteacher.engine.pretrain import distill_losses
from dreamteacher.engine.session import param_groups
from dreamteacher.runtime import autocast
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import create_teacher
from dreamteacher.teachers.interpreter import FeatureInterpreter

PROFILES = {
    "quick": {"image_size": [32, 32], "batch": 4, "preset": "tiny", "backbone": "resnet18",
              "classes": 5, "iters": 1, "warmup": 1},
    # the benchmark's cpu profile (CamVid's 11 classes)
    "cpu": {"image_size": [64, 80], "batch": 16, "preset": "tiny", "backbone": "resnet18",
            "classes": 11, "iters": 8, "warmup": 2},
    "cuda": {"image_size": [256, 320], "batch": 64, "preset": "tiny", "backbone": "resnet50",
             "classes": 11, "iters": 10, "warmup": 3},
}  # fmt: skip
VARIANTS = ["feature"] + [f"{m}-{h}" for m in ("mix", "label") for h in LOGIT_HEADS]


def run(device_name: str = "cpu", quick: bool = False) -> dict:
    device = torch.device(device_name)
    p = dict(PROFILES["quick" if quick else ("cuda" if device.type == "cuda" else "cpu")])
    (h, w), B = p["image_size"], p["batch"]
    channels_last = device.type == "cuda"
    torch.manual_seed(0)
    teacher = create_teacher("diffusion", image_size=[h, w], preset=p["preset"]).to(device)
    x = torch.rand(B, 3, h, w, device=device)
    with autocast(device):
        targets = [f.clone() for f in teacher(x, list(range(B)))]  # level l # B, C_l, h_l, w_l
    interp = FeatureInterpreter(teacher.channels, p["classes"]).to(device).eval()
    interp.requires_grad_(False)

    steps, heads = {}, {}
    for name in VARIANTS:
        mode, _, head = name.partition("-")
        bb = Backbone(p["backbone"])
        reg = FeatureRegressor(
            bb.channels,
            teacher.channels if mode != "label" else [],
            num_classes=p["classes"] if mode != "feature" else None,
            logit_head=head or "uper",
        )
        student = Student(bb, reg).to(device)
        if channels_last:
            student = student.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95))

        def step(student=student, opt=opt, mode=mode):
            def micro(model, batch, keys, step):
                xb, *cached = batch
                return distill_losses(
                    model, None, xb, keys, channels_last=channels_last, cached=cached,
                    interpreter=interp if mode != "feature" else None,
                )  # fmt: skip

            opt.zero_grad(set_to_none=True)
            forward_backward(
                micro, student, (torch.arange(B), x, *targets), 0, 1, 0, device, "auto"
            )
            opt.step()

        steps[name] = step
        if mode == "mix":  # the head's forward MACs on one image's decoder maps, P2..P5
            ch = reg.decoder.fpn[0][0].out_channels
            ps = [torch.zeros(1, ch, h // s, w // s, device=device) for s in (4, 8, 16, 32)]
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                reg.logit_head(ps)
            heads[head] = counter.get_total_flops() // 2
    sec = _time_interleaved(steps, p["iters"], p["warmup"], device)
    return {
        "device": device_label(device),
        "torch": torch.__version__,
        "settings": p,
        "seconds_per_batch": sec,
        "images_per_s": {k: B / v for k, v in sec.items()},
        "ratio_to_feature": {k: v / sec["feature"] for k, v in sec.items()},
        "head_macs_per_image": heads,
    }


def format_result(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"device: {r['device']}  ({s['backbone']}, {s['image_size'][0]}x{s['image_size'][1]}, "
        f"batch {s['batch']}, {s['classes']} classes; student side of the step + AdamW)"
    ]
    for k, v in r["seconds_per_batch"].items():
        lines.append(
            f"  {k:<12} {r['images_per_s'][k]:9.1f} img/s  {v * 1e3:8.1f} ms/batch  "
            f"{r['ratio_to_feature'][k]:5.2f}x feature"
        )
    m = r["head_macs_per_image"]
    lines.append(
        "  logit head MACs per image: "
        + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in m.items())
        + f" ({m['uper'] / m['light']:.1f}x)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    out = Path(args.out or f"bench/results/logit_head_{args.device}{'_quick' * args.quick}.json")
    r = run(args.device, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(format_result(r))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
