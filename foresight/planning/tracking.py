"""Where the designated pixels are after the executed actions: three ways of knowing, one interface.

A tracker is told every executed frame (``observe``) and, at the next replan, says where the designated
pixels are (``locate``, camera pixels) and, when it is the model's own belief, the distribution to plan from:

    ModelTracking         carries the model's predicted distribution of the executed actions (visual foresight)
    RegistrationTracking  re-finds each pixel in the camera frame (``ColorTracker``: images only)
    TrueTracking          the simulator's object pixels (for comparison: what perfect tracking would give)

Visual foresight carries each designated pixel's distribution forward with the model's own prediction of the
executed actions (``track = "model"``): open loop, so every replan inherits the model's tracking error and a
task of 15 replans piles up 15 of them. Ebert et al. 2018 ("Robustness via Retrying") close the loop by
registering each new camera frame to the first one, so the planner restarts every replan from where the
object really is in the image. ``ColorTracker`` does that registration with a classic tracker (CamShift's
colour back-projection, Bradski 1998): a hue-saturation histogram of the patch around each designated pixel
in the first frame, back-projected into every new frame, and mean shift from the last position to the
centroid of the object's pixels, kept to sub-pixel precision. A designated pixel off its object's centroid
keeps its offset from it. It sees only camera images: nothing of the simulator, as a real robot would.

On PointPush's planning data it follows the block centre to 0.3 px (at 64x64) over 20 steps of pushing
(tests/test_planning_mpc.py checks it against the simulator's pixels).
"""
from __future__ import annotations

import cv2
import numpy as np

from foresight import pixels
from foresight.errors import ForesightError

HUE_BINS, SAT_BINS = 30, 32


class ColorTracker:
    """Track K designated pixels through RGB frames (H, W, 3) uint8. ``first`` is the frame they were
    designated in, ``pixels`` (K, 2) (row, col); ``patch`` is the half-size of the patch whose colours
    describe each object, ``window`` the half-size of the mean-shift window (pixels, at the frame's size),
    which must exceed the largest motion between two frames plus the object's half-size."""

    def __init__(self, first: np.ndarray, pixels: np.ndarray, patch: int = 2, window: int = 8):
        first = _rgb(first, "first")
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        hsv = cv2.cvtColor(first, cv2.COLOR_RGB2HSV)
        self.window, self.hists = window, []
        for r, c in np.round(pixels).astype(int):
            part = hsv[max(r - patch, 0):r + patch + 1, max(c - patch, 0):c + patch + 1]
            hist = cv2.calcHist([part], [0, 1], None, [HUE_BINS, SAT_BINS], [0, 180, 0, 256])
            self.hists.append(cv2.normalize(hist, hist, 0, 255, cv2.NORM_MINMAX))
        # centroids of each object in the first frame, and each designated pixel's offset from its centroid
        self.centroids = self._shift(hsv, pixels.copy())
        self.offsets = pixels - self.centroids

    def update(self, frame: np.ndarray) -> np.ndarray:
        """The designated pixels (K, 2) in ``frame``, the next frame after the last one seen."""
        self.centroids = self._shift(cv2.cvtColor(_rgb(frame, "frame"), cv2.COLOR_RGB2HSV), self.centroids.copy())
        return self.centroids + self.offsets

    def _shift(self, hsv: np.ndarray, points: np.ndarray, iterations: int = 10) -> np.ndarray:
        H, W = hsv.shape[:2]
        for k, hist in enumerate(self.hists):
            weight = cv2.calcBackProject([hsv], [0, 1], hist, [0, 180, 0, 256], 1).astype(np.float64)
            for _ in range(iterations):  # mean shift: move to the centroid of the object's pixels in the window
                r0, r1 = int(max(0, np.floor(points[k, 0] - self.window))), int(min(H, np.ceil(points[k, 0] + self.window) + 1))
                c0, c1 = int(max(0, np.floor(points[k, 1] - self.window))), int(min(W, np.ceil(points[k, 1] + self.window) + 1))
                w = weight[r0:r1, c0:c1]
                if w.sum() <= 0:  # the object left the window: keep the last position
                    break
                rows, cols = np.mgrid[r0:r1, c0:c1]
                new = np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()
                done = np.abs(new - points[k]).max() < 0.01
                points[k] = new
                if done:
                    break
        return points


def _rgb(frame, name: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ForesightError(f"{name}: the colour tracker needs RGB frames (H, W, 3) uint8, got "
                             f"{frame.shape} {frame.dtype} (track = 'registration' works on colour scenes only)")
    return frame


class ModelTracking:
    """The designated pixels are where the model's prediction of the executed actions carried them: the centre of
    mass of the carried distribution (model pixels (h, w)), shown in camera pixels (H, W)."""

    def __init__(self, model_size, camera_size):
        self.model_size, self.camera_size = model_size, camera_size

    def observe(self, frame, info) -> None:
        pass

    def locate(self, carried):
        """carried (K, h, w): the model's distribution after the executed actions -> (camera pixels (K, 2), carried)."""
        return pixels.scale_points(pixels.centre_of_mass(carried).numpy(), self.model_size, self.camera_size), carried


class RegistrationTracking:
    """The designated pixels re-found in every camera frame by colour registration (``ColorTracker``)."""

    def __init__(self, first, designated):
        self.tracker, self.last = ColorTracker(first, designated), None

    def observe(self, frame, info) -> None:
        self.last = self.tracker.update(frame)

    def locate(self, carried):
        return self.last, None


class TrueTracking:
    """The simulator's pixels of the designated objects (``objects``: their indices in info["points"])."""

    def __init__(self, objects: list[int]):
        self.objects, self.last = list(objects), None

    def observe(self, frame, info) -> None:
        self.last = info["points"][self.objects]

    def locate(self, carried):
        return self.last, None


TRACKING = ("model", "registration", "true")


def make_tracking(kind: str, first, designated, model_size, camera_size, objects=None):
    """The tracker of a suite's ``mpc.track`` for an episode whose first frame is ``first``; ``objects``: the tracked
    object each designated pixel is on (the first K by default)."""
    if kind == "model":
        return ModelTracking(model_size, camera_size)
    if kind == "registration":
        return RegistrationTracking(first, designated)
    return TrueTracking(objects if objects is not None else range(len(designated)))
