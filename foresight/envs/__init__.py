"""Gymnasium environments with camera-image observations, registered as ``foresight/<Name>-v0``.

Every environment follows the contract in ARCHITECTURE.md: the observation is a ``uint8 (H, W, C)``
image, ``info["state"]`` is the true low-dimensional state, ``info["points"]`` the ``(K, 2)``
(row, col) pixels of the tracked objects, and ``env.unwrapped.get_sim_state()`` /
``set_sim_state(s)`` save and restore the simulator exactly. What an environment can say about its
agent it offers as methods, where it can: ``agent_pixels(states, height, width)`` (a static method: the
agent's pixel from states, for training) and ``agent_path(actions)`` (the agent's pixels along commanded
action sequences from the current state, for planner costs).

Each environment class names its id (``env_id``, as in ``ENVS``) and refuses an action that is not its
action space's number of finite values with a one-line ``ForesightError`` before touching its state
(``envs/actions.py``; finite values out of range are clipped, as ever). MuJoCo scenes make their EGL
context on the first render in the process that renders (``envs/camera.py``), so an environment built in a
parent and used in forked workers (gymnasium's async vector environments) works.
"""
from gymnasium.envs.registration import register, registry

ENVS = {
    "foresight/PointPush-v0": "foresight.envs.point_push:PointPushEnv",
    "foresight/ArmPush-v0": "foresight.envs.arm_push:ArmPushEnv",
    "foresight/PushT-v0": "foresight.envs.pusht:PushTEnv",
    "foresight/Planar-v0": "foresight.envs.planar:PlanarEnv",
    "foresight/Pendulum-v0": "foresight.envs.pendulum:PendulumEnv",
    "foresight/CartPole-v0": "foresight.envs.cartpole:CartPoleEnv",
}
# gymnasium's passive checker warns on every make that rgb_array frames should have 3 channels;
# the classic E2C systems are grey by definition (check_env still runs in the tests).
GREY = {"foresight/Planar-v0", "foresight/Pendulum-v0", "foresight/CartPole-v0"}

for _id, _entry in ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, disable_env_checker=_id in GREY)



def make_env(env_id: str, env_kwargs: dict | None = None, source: str = "recipe"):
    """``gym.make`` with camera images, and errors that name the recipe key at fault."""
    import gymnasium as gym

    from foresight.errors import ForesightError

    env_kwargs = env_kwargs or {}
    if env_id not in registry:
        known = ", ".join(k for k in registry if k.startswith("foresight/"))
        raise ForesightError(f"{source}: key 'env': unknown environment {env_id!r} (foresight offers: {known})")
    try:
        return gym.make(env_id, render_mode="rgb_array", disable_env_checker=True, **env_kwargs)
    except TypeError as e:
        raise ForesightError(f"{source}: key 'env_kwargs': {env_id} rejected the options {env_kwargs} ({e})") from None
    except ForesightError as e:
        raise ForesightError(f"{source}: key 'env_kwargs': {e}") from None


def env_class(env_id: str):
    """The environment class registered as ``env_id`` (for what it offers without being built, e.g. its
    ``agent_pixels``), or None when the entry point is not a class."""
    from gymnasium.envs.registration import load_env_creator

    entry = registry[env_id].entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    return creator if isinstance(creator, type) else None


def agent_pixels(env_id: str, height: int, width: int, where: str = "track_agent"):
    """A picklable function: states (..., S) -> the agent's (row, col) pixel (..., 1, 2) at (height, width), from
    the environment's own ``agent_pixels``."""
    import functools

    from foresight.errors import ForesightError

    fn = getattr(env_class(env_id), "agent_pixels", None)
    if fn is None:
        raise ForesightError(f"{where}: environment {env_id!r} offers no agent_pixels (its agent's pixel from a state)")
    return functools.partial(fn, height=height, width=width)
