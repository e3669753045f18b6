"""Planning speed: the video model at the planner's batch, beside this machine's convolution peak (issue 23).

Writes benchmarks/results/speed.json (speed_gpu.json when CUDA is present): for the shipped planning model at the
default suite's CEM settings (plan/point_push.toml), predicted frames per second, the model's seconds per replan
(`cem.iterations` calls of `cem.samples` sequences), GFLOP/s against a large 3x3 convolution measured in the same
run, and where the time goes (torch.profiler, self time by operator; the CDNA transform's share).

    python benchmarks/speed.py [--model pretrained/plan_point_push] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from datetime import date
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from video import conv_peak_gflops, flops_per_frame, timed  # noqa: E402

from foresight.evaluation import machine, write_json  # noqa: E402
from foresight.learners import load_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pretrained/plan_point_push", help="a run folder (relative to the repository)")
    ap.add_argument("--suite", default="plan/point_push.toml", help="its [cem] table sets batch and horizon")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = tomllib.loads((HERE.parent / args.suite).read_text())
    N, horizon, iterations = suite["cem"]["samples"], suite["cem"]["horizon"], suite["cem"]["iterations"]
    model, _, recipe, _ = load_run(HERE.parent / args.model)
    model.eval()
    context = recipe["train"]["context"]
    cfg = model.config
    H, W = cfg.image_size
    T = context - 1 + horizon  # actions: the past one, then the plan's
    frames, actions = torch.rand(N, context, cfg.channels, H, W), 0.2 * torch.rand(N, T, cfg.action_dim)
    pixels = torch.zeros(N, 1, H, W)
    pixels[:, 0, H // 3, W // 3] = 1.0

    def call():
        with torch.inference_mode():
            model(frames, actions, pixels=pixels, num_context=context)

    seconds = timed(call, args.repeats)
    frames_per_s = N * T / seconds
    flops = flops_per_frame(cfg)  # designated pixels not counted: a lower bound on the work
    peak = conv_peak_gflops(torch.float32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    cdna = next((e.cpu_time_total for e in ops if e.key == "_CDNATransform"), 0.0)
    achieved = flops * frames_per_s / 1e9
    out = {
        "date": str(date.today()), "machine": machine(), "model": args.model, "suite": args.suite,
        "device": "cpu", "threads": torch.get_num_threads(),
        "batch": N, "predicted_frames_per_call": T, "calls_per_replan": iterations,
        "frames_per_second": round(frames_per_s, 1),
        "model_seconds_per_replan": round(iterations * seconds, 3),
        "gflop_per_frame": round(flops / 1e9, 4), "gflops": round(achieved, 1),
        "conv_peak_gflops": round(peak, 1), "peak_fraction": round(achieved / peak, 3),
        "cdna_transform_share": round(cdna / total, 3),
        "self_time_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:8]},
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
    }
    name = "speed_gpu.json" if torch.cuda.is_available() else "speed.json"
    write_json(HERE / "results" / name, out)
    print(out)


if __name__ == "__main__":
    main()
