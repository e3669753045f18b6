"""foresight: pixel-based visual foresight in PyTorch.

Importing the package registers its gymnasium environments (``foresight/<Name>-v0``) and makes
MuJoCo render headless through EGL unless the user chose another backend.
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco

from foresight import envs as _envs  # noqa: E402,F401  (registers the environments)
from foresight.errors import ForesightError  # noqa: E402,F401

__version__ = "0.1.0"
