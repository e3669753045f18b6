"""Lean offscreen rendering and world -> pixel projection for MuJoCo cameras.

MuJoCo's default visual settings (4096-px shadow maps, 4x multisampling, reflections, skybox)
cost ~30 ms per 64x64 frame under software EGL; switched off they cost well under 1 ms, which
makes rendering cheaper than the physics. `make_renderer` applies those settings before the
OpenGL context is created (they are read once, when the context is made).

`project` is the pinhole model MuJoCo itself renders with: a camera looks along its local -z,
its local +x is image right and +y image up, `fovy` is the vertical field of view and the
horizontal one follows from the image's aspect ratio (square pixels). Pixel coordinates follow
DESIGN.md: (row, col), (0, 0) the centre of the top-left pixel.
"""
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


def make_renderer(model: mujoco.MjModel, height: int, width: int, max_geom: int = 500) -> mujoco.Renderer:
    """An offscreen renderer for `model` at (height, width) with shadows, multisampling,
    reflections, skybox and haze switched off, and round shapes tessellated only as finely as
    the image can show. Mutates `model.vis` (visual settings only)."""
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


class Camera:
    """A fixed MuJoCo camera rendered lean at (H, W), with the matching projection."""

    def __init__(self, model: mujoco.MjModel, camera: str | int, height: int, width: int):
        cam_id = camera if _is_int(camera) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if not 0 <= cam_id < model.ncam:
            raise ForesightError(f"camera: no camera {camera!r} in the model")
        self.model, self.cam_id, self.height, self.width = model, int(cam_id), height, width
        self.renderer = make_renderer(model, height, width)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The image (H, W, 3) uint8 of the current kinematics in `data` (a new array)."""
        if self.renderer is None:
            raise RuntimeError("render called after close")
        self.renderer.update_scene(data, camera=self.cam_id)
        return self.renderer.render()

    def project(self, data: mujoco.MjData, points) -> np.ndarray:
        """World points (N, 3) -> (row, col) pixels (N, 2) float32, from the camera's current pose."""
        return project(points, data.cam_xpos[self.cam_id], data.cam_xmat[self.cam_id],
                       self.model.cam_fovy[self.cam_id], self.height, self.width)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
