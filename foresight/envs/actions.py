"""The one check every environment runs on the actions it is given, before they touch its state.

A NaN or infinite action would otherwise poison the state silently (the numpy systems carry NaN from
then on) or reach MuJoCo (which warns and resets the simulation). Both functions raise a one-line
`ForesightError` naming the environment, the action and what was expected; finite actions out of the
action space's bounds pass unchanged (each environment clips them, as it always has).
"""
import math

import numpy as np

from foresight.errors import ForesightError


def check_action(env_id: str, action, space) -> np.ndarray:
    """``action`` as a float64 ``(A,)`` array when it holds the ``A = space.shape[0]`` numbers of the Box ``space``,
    all finite; else a ForesightError naming ``env_id``. The state is not touched: call it first."""
    a = _as_float(env_id, action, space)
    a = a.reshape(-1)
    if a.shape != space.shape:
        raise ForesightError(f"{env_id}: action {_fmt(a)} has {a.size} numbers ({_expected(space)})")
    if not all(map(math.isfinite, a.tolist())):  # a few numbers: 10x quicker than np.isfinite(a).all()
        raise ForesightError(f"{env_id}: action {_fmt(a)} is not finite ({_expected(space)})")
    return a


def check_action_sequences(env_id: str, actions, space) -> np.ndarray:
    """``actions`` (N, T, A) as float64 when every action is A finite numbers (``check_action`` for a batch of
    action sequences, e.g. an oracle's rollouts); the error names the first bad action and where it is."""
    a = _as_float(env_id, actions, space)
    if a.ndim != 3 or a.shape[2:] != space.shape:
        raise ForesightError(f"{env_id}: action sequences of shape {a.shape} ({_expected(space)}, "
                             f"as an array (N, T, {space.shape[0]}))")
    bad = ~np.isfinite(a).all(axis=2)  # (N, T)
    if bad.any():
        n, t = np.argwhere(bad)[0]
        raise ForesightError(f"{env_id}: action {_fmt(a[n, t])} (sequence {n}, step {t}) is not finite "
                             f"({_expected(space)})")
    return a


def _as_float(env_id: str, action, space) -> np.ndarray:
    try:
        return np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        text = " ".join(repr(action).split())  # one line
        raise ForesightError(f"{env_id}: action {text[:200]} is not numbers ({_expected(space)})") from None


def _fmt(a: np.ndarray) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in np.asarray(a).reshape(-1)[:16]) + (", ...]" if a.size > 16 else "]")


def _expected(space) -> str:
    low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
    if (low == low.flat[0]).all() and (high == high.flat[0]).all():
        bounds = f"[{low.flat[0]:.6g}, {high.flat[0]:.6g}]"
    else:
        bounds = f"[{_fmt(low)}, {_fmt(high)}]"
    return f"expected {space.shape[0]} finite numbers in {bounds}; finite values out of range are clipped"
