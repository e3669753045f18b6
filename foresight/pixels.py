"""The (row, col) pixel convention and the geometry every layer shares.

A pixel coordinate is ``(row, col)`` in the image, floats allowed, ``(0, 0)`` the centre of the top-left pixel.
Here: moving pixels between image sizes of the same view, resizing frames, pixel distributions (a designated
pixel as the models carry it, ``(..., K, H, W)`` summing to 1), their centres of mass and expected distances.
Nothing here knows of models, datasets or planners.
"""
from __future__ import annotations

import numpy as np
import torch

from foresight.errors import ForesightError


def scale_points(points: np.ndarray, src, dst) -> np.ndarray:
    """(row, col) pixels (..., 2) of an src = (H, W) image to the dst = (h, w) image of the same view
    ((0, 0) is the centre of the top-left pixel, so centres map as (p + 0.5) * scale - 0.5)."""
    points = np.asarray(points)
    if tuple(src) == tuple(dst) and points.dtype.kind == "f":
        return points
    scale = np.array([dst[0] / src[0], dst[1] / src[1]])
    out = (points + 0.5) * scale - 0.5
    return out.astype(points.dtype) if points.dtype.kind == "f" else out


def resize_frames(frames: np.ndarray, size) -> np.ndarray:
    """uint8 frames (..., H, W, C) area-averaged to size (h, w): how a model that works on smaller
    images than the camera's (a planning model, say) sees every frame, in training and in planning."""
    import cv2

    h, w = size
    if frames.shape[-3:-1] == (h, w):
        return frames
    lead, (H, W, C) = frames.shape[:-3], frames.shape[-3:]
    flat = frames.reshape(-1, H, W, C)
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, C) for f in flat])
    return out.reshape(*lead, h, w, C)


def check_in_image(name: str, pixels, H: int, W: int) -> np.ndarray:
    """Pixels (K, 2) that must lie in an H x W image (designated and goal pixels), as float64."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    for r, c in pixels:
        if not (0 <= r <= H - 1 and 0 <= c <= W - 1):
            raise ForesightError(f"{name}: pixel ({r:g}, {c:g}) lies outside the {H}x{W} image "
                                 f"(rows 0..{H - 1}, columns 0..{W - 1})")
    return pixels


def in_image(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 2) (row, col) pixels -> (...,) bool: inside the image. An object whose pixel is outside is not in
    view (PointPush parks the blocks an episode does not use outside the walls): nothing to track."""
    return (points >= 0).all(-1) & (points[..., 0] <= height - 1) & (points[..., 1] <= width - 1)


def delta_distribution(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, 2) (row, col) pixels -> (B, K, H, W) distributions, bilinear over the four nearest pixels."""
    B, K, _ = points.shape
    r = points[..., 0].clamp(0, height - 1)
    c = points[..., 1].clamp(0, width - 1)
    r0, c0 = r.floor().clamp(max=height - 2).long(), c.floor().clamp(max=width - 2).long()
    fr, fc = r - r0, c - c0
    dist = torch.zeros(B, K, height * width, device=points.device)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        dist.scatter_add_(2, ((r0 + dr) * width + (c0 + dc))[..., None], w[..., None])
    return dist.view(B, K, height, width)


def centre_of_mass(dist: torch.Tensor) -> torch.Tensor:
    """(..., H, W) distributions (any positive mass) -> (..., 2) their mean (row, col) pixel."""
    H, W = dist.shape[-2:]
    mass = dist.sum((-2, -1)).clamp_min(1e-12)
    rows = torch.arange(H, device=dist.device, dtype=dist.dtype)
    cols = torch.arange(W, device=dist.device, dtype=dist.dtype)
    return torch.stack([(dist.sum(-1) * rows).sum(-1), (dist.sum(-2) * cols).sum(-1)], -1) / mass[..., None]


def distance_maps(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 2) (row, col) pixels -> (..., H, W): every pixel's Euclidean distance to each point."""
    rows = torch.arange(height, device=points.device, dtype=torch.float32).view(height, 1)
    cols = torch.arange(width, device=points.device, dtype=torch.float32).view(1, width)
    return torch.sqrt((rows - points[..., 0, None, None]) ** 2 + (cols - points[..., 1, None, None]) ** 2)


def expected_distance(dist: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """E[|pixel - point|] under each distribution. dist (..., K, H, W), points (..., K, 2) -> (..., K)."""
    return (dist.float() * distance_maps(points.float(), *dist.shape[-2:])).sum((-2, -1))
