"""Lean offscreen rendering and world -> pixel projection for MuJoCo cameras.

MuJoCo's default visual settings (4096-px shadow maps, 4x multisampling, reflections, skybox)
cost ~30 ms per 64x64 frame under software EGL; switched off they cost well under 1 ms, which
makes rendering cheaper than the physics. `lean_visuals` sets them in the model and `make_renderer`
creates the OpenGL context after them (they are read once, when the context is made).

A `Camera` makes its renderer (and so its EGL context) on its first render, in the process that
renders, never before: an environment built in one process and used in another after `fork`
(gymnasium's async vector environments build one in the parent to read its spaces, then fork the
workers) renders through a context of its own. An EGL context does not survive a fork; one made by
another process is left alone (never used, never freed: it is not this process's) and a new one made.
Under Mesa's software EGL (llvmpipe) a process that has itself rendered still cannot have forked
children render (its rasteriser threads do not survive the fork; LP_NUM_THREADS=0, set before the first
context, lifts that): such a process's worker pools spawn.

`project` is the pinhole model MuJoCo itself renders with: a camera looks along its local -z,
its local +x is image right and +y image up, `fovy` is the vertical field of view and the
horizontal one follows from the image's aspect ratio (square pixels). Pixel coordinates follow
DESIGN.md: (row, col), (0, 0) the centre of the top-left pixel.
"""
import ctypes
import os

import numpy as np

import mujoco  # (foresight/__init__.py, imported first, has chosen EGL)

from foresight.errors import ForesightError


def image_shape(image_size) -> tuple[int, int]:
    """`image_size` (an int for a square image, or an (H, W) pair) -> (H, W), validated."""
    sizes = (image_size, image_size) if _is_int(image_size) else image_size
    if not isinstance(sizes, (list, tuple)) or len(sizes) != 2:
        raise ForesightError(f"image_size: expected an int or an (H, W) pair of ints, got {image_size!r}")
    if not all(_is_int(s) and s >= 1 for s in sizes):
        raise ForesightError(f"image_size: expected positive ints, got {image_size!r}")
    return int(sizes[0]), int(sizes[1])


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _import_torchvision_first() -> None:
    """torchvision imported after the process's first EGL context crashes it (a segmentation fault inside
    torchvision's import, which torchmetrics and so the planner and evaluation pull in): import it before.
    Costs its import time once per process that renders; nothing when torchvision is absent."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass


def lean_visuals(model: mujoco.MjModel, height: int, width: int) -> None:
    """Set `model.vis` for lean rendering at (height, width): no shadow map, no multisampling, round shapes
    tessellated only as finely as the image can show, an offscreen buffer that holds the image. Visual
    settings only (the physics never reads them); no OpenGL. Idempotent."""
    model.vis.quality.shadowsize = 0  # no shadow map pass
    model.vis.quality.offsamples = 0  # no multisample buffer
    # Software rasterisation pays per triangle: MuJoCo's default 28 x 16 facets per sphere or
    # capsule make Pusher's arm cost ~4 ms a frame at 64x64, 12 x 6 about 1 ms.
    slices = int(np.clip(max(height, width) // 8, 12, 28))
    model.vis.quality.numslices = min(model.vis.quality.numslices, slices)
    model.vis.quality.numstacks = min(model.vis.quality.numstacks, slices // 2)
    # the offscreen framebuffer must hold the image; grow it, never shrink it
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)


def make_renderer(model: mujoco.MjModel, height: int, width: int, max_geom: int = 500) -> mujoco.Renderer:
    """An offscreen renderer for `model` at (height, width) with shadows, multisampling,
    reflections, skybox and haze switched off, and round shapes tessellated only as finely as
    the image can show (`lean_visuals`, which mutates `model.vis`). Creates an EGL context in
    this process."""
    lean_visuals(model, height, width)
    _import_torchvision_first()
    renderer = mujoco.Renderer(model, height=height, width=width, max_geom=max_geom)
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                 mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_HAZE):
        renderer.scene.flags[flag] = 0
    return renderer


def project(points, cam_pos, cam_mat, fovy: float, height: int, width: int) -> np.ndarray:
    """World points (N, 3) -> pixel coordinates (N, 2) as (row, col), float32.

    cam_pos (3,): camera position; cam_mat (3, 3) or (9,): its orientation, columns = the
    camera's x, y, z axes in world frame (MuJoCo's `data.cam_xmat`); fovy: vertical field of view
    in degrees (`model.cam_fovy`). Points behind the camera give meaningless values.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rot = np.asarray(cam_mat, dtype=np.float64).reshape(3, 3)
    local = (points - np.asarray(cam_pos, dtype=np.float64)) @ rot  # (N, 3) in camera frame
    depth = -local[:, 2]  # the camera looks along its -z
    focal = 0.5 * height / np.tan(np.deg2rad(fovy) / 2)  # pixels per unit of x/depth
    col = (width - 1) / 2 + focal * local[:, 0] / depth
    row = (height - 1) / 2 - focal * local[:, 1] / depth  # image rows grow downwards
    return np.stack([row, col], axis=1).astype(np.float32)


# Renderers inherited through fork from the process that made them. Closing one, or letting it be garbage
# collected (its __del__ closes it), would free the parent's EGL and MuJoCo rendering context from a process
# that never owned it; they are kept here instead, and the list itself is never freed (one extra reference,
# taken once), so not even interpreter shutdown touches them.
_INHERITED: list = []
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_INHERITED))


class Camera:
    """A fixed MuJoCo camera rendered lean at (H, W), with the matching projection.

    The renderer is made on the first `render` in the process that renders (see the module's docstring);
    building a Camera creates no OpenGL context."""

    def __init__(self, model: mujoco.MjModel, camera: str | int, height: int, width: int):
        cam_id = camera if _is_int(camera) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if not 0 <= cam_id < model.ncam:
            raise ForesightError(f"camera: no camera {camera!r} in the model")
        self.model, self.cam_id, self.height, self.width = model, int(cam_id), height, width
        lean_visuals(model, height, width)  # now, as before: the model's visual settings never depend on timing
        self._renderer: mujoco.Renderer | None = None
        self._pid: int | None = None  # the process that made self._renderer
        self._closed = False

    @property
    def renderer(self) -> mujoco.Renderer | None:
        """This process's renderer, made now if there is none yet (None after `close`)."""
        if self._closed:
            return None
        if self._renderer is not None and self._pid != os.getpid():
            _INHERITED.append(self._renderer)  # another process's context: never used, never freed
            self._renderer = None
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.height, self.width)
            self._pid = os.getpid()
        return self._renderer

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The image (H, W, 3) uint8 of the current kinematics in `data` (a new array)."""
        renderer = self.renderer
        if renderer is None:
            raise RuntimeError("render called after close")
        renderer.update_scene(data, camera=self.cam_id)
        return renderer.render()

    def project(self, data: mujoco.MjData, points) -> np.ndarray:
        """World points (N, 3) -> (row, col) pixels (N, 2) float32, from the camera's current pose."""
        return project(points, data.cam_xpos[self.cam_id], data.cam_xmat[self.cam_id],
                       self.model.cam_fovy[self.cam_id], self.height, self.width)

    def close(self) -> None:
        """Free this process's renderer, if it made one; another process's is left alone. Idempotent."""
        if self._renderer is not None:
            if self._pid == os.getpid():
                self._renderer.close()
            else:
                _INHERITED.append(self._renderer)
        self._renderer, self._closed = None, True
