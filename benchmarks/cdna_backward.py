"""CDNA transform in training: the hand-written backward (two convolutions) vs autograd's depthwise backward.

The transform is one depthwise convolution in the forward pass; on CPU, autograd's backward of a depthwise
convolution with large kernels took ~30x its forward and most of a training step of the planning model.
Both paths compute the same forward (``transforms._cdna_forward``); this times forward + backward side by side at
the planning recipe's shapes (train/plan_point_push.toml: batch 16, 32x32, 10 kernels of 9x9, RGB plus one
designated-pixel map) and the paper preset's (batch 32, 64x64, 10 kernels of 5x5), and one whole training
step of the planning recipe's model with each path.

    python benchmarks/cdna_backward.py   -> benchmarks/results/cdna_backward.json
"""
from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import torch

from foresight import evaluation
from foresight.models import transforms, video

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def op_seconds(transform, B, Ch, size, N, k, repeats=10) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, Ch, size, size, generator=g, requires_grad=True)
    w = torch.softmax(torch.randn(B, N, k * k, generator=g), -1).view(B, N, k, k).requires_grad_()
    return timed(lambda: transform(x, w).sum().backward(), repeats)


def step_seconds(repeats=5) -> float:
    cfg = video.VideoPredictionConfig.small("cdna", image_size=(32, 32), channels=3, action_dim=2,
                                            widths=(8, 8, 16, 16, 32, 16, 8), transform_kernel=9, skip=True)
    model = video.VideoPredictionModel(cfg)
    g = torch.Generator().manual_seed(0)
    frames, actions = torch.rand(16, 8, 3, 32, 32, generator=g), torch.rand(16, 7, 2, generator=g)
    points = torch.rand(16, 8, 1, 2, generator=g) * 31
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        loss = model.loss(frames, actions, num_context=2, points=points, track_weight=2e-3)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, repeats)


def main() -> None:
    torch.manual_seed(0)
    autograd = transforms._cdna_forward  # differentiable by autograd: the old path
    shapes = {"planning (16 x 4 x 32 x 32, 10 kernels 9x9)": (16, 4, 32, 10, 9),
              "paper (32 x 3 x 64 x 64, 10 kernels 5x5)": (32, 3, 64, 10, 5)}
    ops = {}
    for name, s in shapes.items():
        ours, theirs = op_seconds(transforms.cdna_transform, *s), op_seconds(autograd, *s)
        ops[name] = {"hand_written_ms": round(1000 * ours, 2), "autograd_ms": round(1000 * theirs, 2),
                     "speedup": round(theirs / ours, 2)}
    ours = step_seconds()
    transforms.cdna_transform, saved = autograd, transforms.cdna_transform  # the model calls the module-level name
    try:
        theirs = step_seconds()
    finally:
        transforms.cdna_transform = saved
    result = {
        "date": date.today().isoformat(),
        "machine": evaluation.machine(torch.get_num_threads()),
        "forward_plus_backward": ops,
        "planning_recipe_training_step_s": {"hand_written": round(ours, 3), "autograd": round(theirs, 3),
                                            "speedup": round(theirs / ours, 2)},
    }
    out = HERE / "results" / "cdna_backward.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
