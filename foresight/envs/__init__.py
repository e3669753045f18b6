"""Gymnasium environments with camera-image observations, registered as ``foresight/<Name>-v0``.

Every environment follows the contract in DESIGN.md: the observation is a ``uint8 (H, W, C)``
image, ``info["state"]`` is the true low-dimensional state, ``info["points"]`` the ``(K, 2)``
(row, col) pixels of the tracked objects, and ``env.unwrapped.get_sim_state()`` /
``set_sim_state(s)`` save and restore the simulator exactly.
"""
from gymnasium.envs.registration import register, registry

ENVS = {
    "foresight/PointPush-v0": "foresight.envs.point_push:PointPushEnv",
    "foresight/ArmPush-v0": "foresight.envs.arm_push:ArmPushEnv",
    "foresight/Planar-v0": "foresight.envs.planar:PlanarEnv",
    "foresight/Pendulum-v0": "foresight.envs.pendulum:PendulumEnv",
}
# gymnasium's passive checker warns on every make that rgb_array frames should have 3 channels;
# the classic E2C systems are grey by definition (check_env still runs in the tests).
GREY = {"foresight/Planar-v0", "foresight/Pendulum-v0"}

for _id, _entry in ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, disable_env_checker=_id in GREY)

# What environments can say about their agent, for those that can (module:function, bound by the functions below):
# its pixel from a state (train.track_agent supervises the model's motion at the agent as at the objects), and its
# path over a plan from its own kinematics and the calibrated camera (planner costs about where the agent goes,
# mpc.approach_weight).
AGENT_PIXELS = {"foresight/PointPush-v0": "foresight.envs.point_push:pusher_pixels"}
AGENT_PATHS = {"foresight/PointPush-v0": "foresight.envs.point_push:pusher_path"}


def agent_pixels(env_id: str, height: int, width: int, where: str = "track_agent"):
    """A picklable function: states (..., S) -> the agent's (row, col) pixel (..., 1, 2) at (height, width)."""
    return _bound(AGENT_PIXELS, "agent pixel", env_id, where, height=height, width=width)


def agent_path(env_id: str, height: int, width: int, action_repeat: int = 1, where: str = "mpc.approach_weight"):
    """A picklable function: (state (S,), actions (N, T, A)) -> the agent's (row, col) pixel (N, T, 2) after each
    action, at (height, width), the environment holding each action ``action_repeat`` control steps."""
    return _bound(AGENT_PATHS, "agent path", env_id, where, height=height, width=width, action_repeat=action_repeat)


def _bound(table: dict, what: str, env_id: str, where: str, **kwargs):
    import functools
    import importlib

    from foresight.errors import ForesightError

    if env_id not in table:
        raise ForesightError(f"{where}: environment {env_id!r} has no {what} (supported: {', '.join(sorted(table))})")
    module, name = table[env_id].split(":")
    return functools.partial(getattr(importlib.import_module(module), name), **kwargs)
