"""Metrics and baselines that live beside the models (as in SAVP).

Per-step image metrics (PSNR, SSIM), the copy-last-frame baseline, and designated-pixel tracking:
start a distribution at the true object pixel, let the model carry it with the true actions, and
measure the expected distance to where the object really is, against a distribution that stays put.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from foresight.datasets import atomic_write_text
from foresight.errors import ForesightError
from foresight.pixels import delta_distribution, expected_distance


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) in [0, 1] -> (B, T) peak signal-to-noise ratio in dB (capped at 100 for equal images)."""
    mse = ((pred.float() - target.float()) ** 2).mean((2, 3, 4))
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) in [0, 1] -> (B, T) structural similarity (Gaussian window 11, sigma 1.5)."""
    B, T = pred.shape[:2]
    flat = structural_similarity_index_measure(pred.float().flatten(0, 1).clamp(0, 1), target.float().flatten(0, 1),
                                               data_range=1.0, reduction="none")
    return flat.view(B, T)


def copy_last_frame(context: torch.Tensor, steps: int) -> torch.Tensor:
    """The baseline that predicts no change: the last context frame repeated. (B, Tc, ...) -> (B, steps, ...)."""
    return context[:, -1:].expand(-1, steps, *context.shape[2:])


def machine(threads: str | int | None = None) -> str:
    """The machine a benchmark ran on, for its JSON: CPU model (speed depends on it, not only on the core
    count), cores, torch version and, when given, the threads it used."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux: platform's name
    text = f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, torch {torch.__version__}"
    return text if threads is None else f"{text}, {threads} thread(s)"


def write_json(path: Path, data: dict) -> Path:
    """Write through a temporary file and an atomic rename (the dataset store's way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def plot_per_step(path: Path, curves: dict[str, dict[str, list[float]]], title: str) -> Path:
    """One panel per metric, one line per method, x = prediction step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (metric, lines) in zip(axes, curves.items()):
        for name, values in lines.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
        ax.set_xlabel("prediction step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.inference_mode()
def evaluate_video(model, data_dir: str | Path, context: int, horizon: int, val_fraction: float, seed: int,
                   use_states: bool = False, batch_size: int = 32, max_windows: int | None = None,
                   moved_px: float = 3.0, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Per-step PSNR / SSIM against copy-last-frame, and designated-pixel tracking error against a
    distribution that stays where it started, on non-overlapping validation windows.

    Tracking is measured on the (window, object) pairs in which the object really moves: at least
    ``moved_px`` pixels from its start at some predicted step.
    """
    from tqdm import tqdm

    from foresight.datasets import WindowDataset

    window = context + horizon
    val = WindowDataset(data_dir, window, "val", val_fraction, seed, stride=window, image_size=model.config.image_size)
    if len(val) == 0:
        raise ForesightError(f"{data_dir}: the validation split is empty (val_fraction={val_fraction})")
    if max_windows:
        val.items = val.items[:max_windows]
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False)
    sums = {k: torch.zeros(horizon, dtype=torch.float64) for k in ("psnr", "psnr_copy", "ssim", "ssim_copy")}
    track, static, objects, windows = [], [], [], 0
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        frames = batch["frames"].to(device)
        actions = batch["actions"].to(device)
        states = batch["states"].to(device) if use_states else None
        points = batch["points"].to(device)  # (B, L, K, 2)
        H, W = frames.shape[-2:]
        start = delta_distribution(points[:, context - 1], H, W)
        out = model(frames[:, :context], actions, states, pixels=start, num_context=context)
        pred, truth = out.frames[:, context - 1:], frames[:, context:]
        copy = copy_last_frame(frames[:, :context], horizon)
        for name, metric in (("psnr", psnr), ("ssim", ssim)):
            sums[name] += metric(pred, truth).sum(0).double().cpu()
            sums[f"{name}_copy"] += metric(copy, truth).sum(0).double().cpu()
        windows += len(frames)
        future = points[:, context:]  # (B, horizon, K, 2)
        moved = (future - points[:, context - 1:context]).norm(dim=-1).amax(1) >= moved_px  # (B, K)
        model_err = expected_distance(out.pixels, future)  # (B, horizon, K)
        static_err = expected_distance(start[:, None].expand(-1, horizon, -1, -1, -1), future)
        track.append(model_err.permute(0, 2, 1)[moved].cpu())  # (pairs, horizon)
        static.append(static_err.permute(0, 2, 1)[moved].cpu())
        objects.append(torch.arange(moved.shape[1], device=moved.device).expand_as(moved)[moved].cpu())  # (pairs,)
    mean = {k: (v / windows).tolist() for k, v in sums.items()}
    track, static, objects = torch.cat(track), torch.cat(static), torch.cat(objects)
    result = {
        "windows": windows, "context": context, "horizon": horizon,
        "psnr": mean["psnr"], "psnr_copy_last": mean["psnr_copy"],
        "ssim": mean["ssim"], "ssim_copy_last": mean["ssim_copy"],
        "psnr_gain_db": float(np.mean(np.array(mean["psnr"]) - np.array(mean["psnr_copy"]))),
        "psnr_gain_min_db": float(np.min(np.array(mean["psnr"]) - np.array(mean["psnr_copy"]))),
        "tracking_pairs": len(track), "tracking_moved_px": moved_px,
    }
    if len(track):
        t, s = track.mean(0), static.mean(0)
        result.update({"tracking_error": t.tolist(), "tracking_error_static": s.tolist(),
                       "tracking_ratio": float(t[-1] / s[-1].clamp_min(1e-6))})
        # each object's own ratio: an agent that is easy to follow can hide an object the model does not move
        result["tracking_ratio_per_object"] = [
            float(track[objects == k, -1].mean() / static[objects == k, -1].mean().clamp_min(1e-6))
            if bool((objects == k).any()) else None for k in range(int(points.shape[2]))]
    return result


def write_video_report(result: dict, out_dir: Path, title: str) -> tuple[Path, Path]:
    """eval.json and eval.png (PSNR, SSIM and tracking error against the prediction step)."""
    curves = {"PSNR (dB)": {"model": result["psnr"], "copy last frame": result["psnr_copy_last"]},
              "SSIM": {"model": result["ssim"], "copy last frame": result["ssim_copy_last"]}}
    if "tracking_error" in result:
        curves["designated-pixel error (px)"] = {"model": result["tracking_error"],
                                                 "static": result["tracking_error_static"]}
    return write_json(out_dir / "eval.json", result), plot_per_step(out_dir / "eval.png", curves, title)
