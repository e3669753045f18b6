"""Pictures: GIF / MP4 writing, tracked points and heat maps drawn on frames, contact sheets.

Frames are ``uint8 (H, W, C)`` with C = 1 or 3. Small images are enlarged by an integer factor
(nearest neighbour, so pixels stay honest) before anything is drawn on them.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Marker colours for tracked points, in order (rgb).
PALETTE = np.array([[255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 128, 0], [128, 255, 0]], dtype=np.uint8)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def enlarge(frame: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(to_rgb(frame), scale, axis=0), scale, axis=1)


def draw_points(frame: np.ndarray, points: np.ndarray, scale: int = 4, colors: np.ndarray | None = None,
                marker: str = "circle") -> np.ndarray:
    """Enlarge ``frame`` by ``scale`` and mark each (row, col) point (DESIGN.md pixel convention)."""
    return mark(enlarge(frame, scale), points, scale, colors, marker)


def mark(image: np.ndarray, points: np.ndarray, scale: int, colors: np.ndarray | None = None,
         marker: str = "circle") -> np.ndarray:
    """Mark (row, col) points of the original image on an image already enlarged by ``scale``."""
    img = np.ascontiguousarray(image).copy()
    colors = PALETTE if colors is None else np.asarray(colors)
    for k, (r, c) in enumerate(np.asarray(points, dtype=np.float64).reshape(-1, 2)):
        if not np.isfinite([r, c]).all():
            continue
        centre = (int(round((c + 0.5) * scale - 0.5)), int(round((r + 0.5) * scale - 0.5)))  # cv2 wants (x, y)
        color = tuple(int(v) for v in colors[k % len(colors)])
        if marker == "cross":
            cv2.drawMarker(img, centre, color, cv2.MARKER_CROSS, markerSize=2 * scale + 2, thickness=1)
        else:
            cv2.circle(img, centre, max(scale, 3), color, thickness=1, lineType=cv2.LINE_AA)
    return img


def heatmap(frame: np.ndarray, dist: np.ndarray, scale: int = 4, alpha: float = 0.6) -> np.ndarray:
    """Overlay a probability map ``(H, W)`` on ``frame`` (normalised to its own maximum)."""
    d = np.asarray(dist, dtype=np.float64)
    d = d / d.max() if d.max() > 0 else d
    heat = cv2.applyColorMap((d * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    base = to_rgb(frame).astype(np.float64)
    out = (1 - alpha * d[..., None]) * base + alpha * d[..., None] * heat
    return enlarge(out.clip(0, 255).astype(np.uint8), scale)


def grid(images: list[list[np.ndarray]], pad: int = 2, fill: int = 32) -> np.ndarray:
    """Tile rows of equally sized rgb images into one image."""
    h, w = images[0][0].shape[:2]
    cols = max(len(row) for row in images)
    out = np.full((len(images) * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i, row in enumerate(images):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = to_rgb(img)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_rgb(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Through a temporary name and a rename (``datasets.atomic_write_bytes``): never half a picture."""
    return _publish(path, io.BytesIO(png_bytes(image)))


def write_gif(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float = 8) -> Path:
    """Through a temporary name and a rename (``datasets.atomic_write_bytes``): never half a video."""
    buffer = io.BytesIO()
    images = [Image.fromarray(to_rgb(f)) for f in frames]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return _publish(path, buffer)


def _publish(path, buffer: io.BytesIO) -> Path:
    from foresight.datasets import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_mp4(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float = 8) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = np.asarray(frames[0]).shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(np.ascontiguousarray(to_rgb(f)[..., ::-1]))
    writer.release()
    return path


def episode_strip(frames: np.ndarray, points: np.ndarray | None, every: int = 1, scale: int = 3) -> list[np.ndarray]:
    """Every ``every``-th frame of an episode, enlarged, with its tracked points marked."""
    idx = range(0, len(frames), every)
    if points is None:
        return [enlarge(frames[t], scale) for t in idx]
    return [draw_points(frames[t], points[t], scale) for t in idx]
