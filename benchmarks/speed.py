"""Planning speed: the video model at the planner's batch, the full replan, beside this machine's convolution peak
(issue 23).

Writes benchmarks/results/speed.json (speed_gpu.json when CUDA is present). For the shipped planning model at the
default suite's CEM settings (plan/point_push.toml), each path side by side in one run:
  reference  the planner's call before issue 23: the context steps re-run for every sequence, CDNA's compositing
             over N moved copies of the frame, a sigmoid or tanh per LSTM gate;
  fast       the planner's call now (``shared_context``: the context runs once;
             ``transforms.cdna_composite_per_pixel``: the composite as one kernel per pixel; one sigmoid over the
             four gates, ``ConvLSTMCell``).
For each: predicted frames per second at the planner's batch, the model's seconds per replan (`cem.iterations`
calls of `cem.samples` sequences), GFLOP/s counted as the reference's FLOPs per predicted frame (the fast path does
less work for the same frames) against a large 3x3 convolution measured in the same run, and where the time goes
(torch.profiler, self time by operator). Then the full replan (model, cost, CEM, tracking) of `foresight plan` on
the suite's first --tasks tasks under each path, and the largest difference between their executed actions.

    python benchmarks/speed.py [--model pretrained/plan_point_push] [--threads 2] [--tasks 3]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from video import conv_peak_gflops, flops_per_frame  # noqa: E402

from foresight.envs import make_env  # noqa: E402
from foresight.evaluation import machine, write_json  # noqa: E402
from foresight.models import transforms  # noqa: E402
from foresight.models.video import ConvLSTMCell, VideoPredictionModel  # noqa: E402
from foresight.planning import mpc, planners, suites  # noqa: E402

PATHS = ("reference", "fast")


@contextlib.contextmanager
def path(name: str):
    """Run the model as the planner did before issue 23 (``reference``) or as it does now (``fast``)."""
    if name == "fast":
        yield
        return
    saved = transforms.cdna_composite, VideoPredictionModel.forward, ConvLSTMCell.forward

    def every_sequence(self, *args, shared_context=False, **kwargs):
        return saved[1](self, *args, **kwargs)

    def four_gates(self, x, state):  # a sigmoid or tanh per gate, each over a strided channel slice
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.width, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
            state = (zeros, zeros)
        h, c = state
        i, j, f, o = self.conv(torch.cat([x, h.expand(len(x), -1, -1, -1)], 1)).chunk(4, 1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.norm(h), (h, c)

    transforms.cdna_composite, VideoPredictionModel.forward, ConvLSTMCell.forward = \
        transforms.cdna_composite_moved, every_sequence, four_gates
    try:
        yield
    finally:
        transforms.cdna_composite, VideoPredictionModel.forward, ConvLSTMCell.forward = saved


def call_seconds(predictor, context, N, T, repeats: int) -> dict[str, float]:
    """Median seconds of one planner call (N sequences, T - context + 1 planned actions) per path, interleaved."""
    cfg = predictor.model.config
    H, W = cfg.image_size
    g = torch.Generator().manual_seed(0)
    frames, past = torch.rand(context, cfg.channels, H, W, generator=g), torch.zeros(context - 1, cfg.action_dim)
    actions = 0.2 * torch.rand(N, T - (context - 1), cfg.action_dim, generator=g)
    dists = torch.zeros(1, H, W)
    dists[0, H // 3, W // 3] = 1.0
    seconds = {p: [] for p in PATHS}
    outputs = {}
    for p in PATHS:  # warm-up: allocator, oneDNN primitive caches
        with path(p):
            outputs[p] = predictor(frames, past, actions, dists)
    for _ in range(repeats):
        for p in PATHS:
            with path(p):
                start = time.perf_counter()
                predictor(frames, past, actions, dists)
                seconds[p].append(time.perf_counter() - start)
    diff = max(float((a - b).abs().max()) for a, b in zip(outputs["fast"], outputs["reference"]))
    return {p: statistics.median(s) for p, s in seconds.items()}, diff, (frames, past, actions, dists)


def where_time_goes(predictor, inputs, name: str) -> dict[str, float]:
    with path(name), profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor(*inputs)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    return {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:8]}


def replans(suite, predictor, tasks: int) -> dict:
    """`foresight plan`'s model planner on the first tasks under each path: seconds per replan and the actions."""
    env = make_env(suite.env, suite.env_kwargs, "bench")
    out = {p: {"seconds": [], "model_seconds": [], "actions": []} for p in PATHS}
    try:
        chosen = suites.make_tasks(suite, env)[:tasks]
        with path("fast"):  # warm-up
            mpc.run_task(env, chosen[0], suite, "model", predictor, record=False)
        for task in chosen:
            for p in PATHS:
                with path(p):
                    o = mpc.run_task(env, task, suite, "model", predictor, record=False, keep_episode=True)
                out[p]["seconds"].append(o.seconds_per_replan)
                out[p]["model_seconds"].append(o.model_seconds_per_replan)
                out[p]["actions"].append(o.episode["actions"])
    finally:
        env.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pretrained/plan_point_push", help="a run folder (relative to the repository)")
    ap.add_argument("--suite", default="plan/point_push.toml", help="its [cem] table sets batch and horizon")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=3, help="tasks of the suite whose full replans are timed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = suites.load(HERE.parent / args.suite)
    predictor = planners.load_model(HERE.parent / args.model)
    N, horizon, iterations = suite.cem.samples, suite.cem.horizon, suite.cem.iterations
    context = predictor.context
    T = context - 1 + horizon  # actions: the past one, then the plan's
    seconds, diff, inputs = call_seconds(predictor, context, N, T, args.repeats)
    flops = flops_per_frame(predictor.model.config)  # designated pixels not counted: a lower bound on the work
    peak = conv_peak_gflops(torch.float32)
    runs = replans(suite, predictor, args.tasks)
    model = {}
    for p in PATHS:
        frames_per_s = N * T / seconds[p]
        achieved = flops * frames_per_s / 1e9
        model[p] = {
            "frames_per_second": round(frames_per_s, 1), "model_seconds_per_call": round(seconds[p], 4),
            "model_seconds_per_replan": round(iterations * seconds[p], 3), "gflops": round(achieved, 1),
            "peak_fraction": round(achieved / peak, 3),
            "seconds_per_replan": round(float(np.mean(runs[p]["seconds"])), 3),
            "seconds_per_replan_per_task": [round(s, 3) for s in runs[p]["seconds"]],
            "self_time_share": where_time_goes(predictor, inputs, p)}
    same = [bool(a.shape == b.shape and np.allclose(a, b, atol=1e-4))
            for a, b in zip(runs["fast"]["actions"], runs["reference"]["actions"])]
    action_diff = max(float(np.abs(a - b).max()) for a, b in zip(runs["fast"]["actions"], runs["reference"]["actions"]))
    fast, ref = model["fast"], model["reference"]
    out = {
        "date": str(date.today()), "machine": machine(), "model": args.model, "suite": args.suite,
        "device": "cpu", "threads": torch.get_num_threads(),
        "batch": N, "predicted_frames_per_call": T, "calls_per_replan": iterations,
        "gflop_per_frame": round(flops / 1e9, 4), "conv_peak_gflops": round(peak, 1),
        "seconds_per_replan": fast["seconds_per_replan"], "peak_fraction": fast["peak_fraction"],
        "speedup_replan": round(ref["seconds_per_replan"] / fast["seconds_per_replan"], 2),
        "speedup_model": round(ref["model_seconds_per_call"] / fast["model_seconds_per_call"], 2),
        "prediction_max_abs_diff": diff, "tasks_timed": args.tasks, "same_actions_per_task": same,
        "executed_action_max_abs_diff": action_diff, "paths": model,
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
    }
    name = "speed_gpu.json" if torch.cuda.is_available() else "speed.json"
    write_json(HERE / "results" / name, out)
    print({k: v for k, v in out.items() if k != "paths"})
    for p in PATHS:
        print(p, {k: v for k, v in model[p].items() if k != "self_time_share"})


if __name__ == "__main__":
    main()
