"""Exact save and restore of a MuJoCo simulation, and the rollouts an oracle planner scores (ARCHITECTURE.md)."""
import numpy as np

import mujoco  # (foresight/__init__.py, imported first, has chosen EGL)

from foresight.envs.actions import check_action_sequences
from foresight.errors import ForesightError

# Positions, velocities, controls, solver warm start and time: restoring this makes the following
# steps bit-identical (FULLPHYSICS would omit the warm start).
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class PointRollouts:
    """Mixed into an environment with ``env_id``, ``action_space``, ``point_names``, ``get_sim_state`` /
    ``set_sim_state``, ``_simulate(action)`` (one control step of physics, no rendering, of a checked action) and
    ``_points()`` (the tracked pixels, (K, 2))."""

    def rollout_points(self, actions) -> np.ndarray:
        """Tracked pixels after each action of each sequence, each started from the current state,
        which is restored afterwards: what an oracle planner scores. (N, T, A) -> (N, T, K, 2)."""
        actions = check_action_sequences(self.env_id, actions, self.action_space)  # float64, all finite
        start = self.get_sim_state()
        out = np.empty((*actions.shape[:2], len(self.point_names), 2), dtype=np.float32)
        try:
            for n, sequence in enumerate(actions):
                self.set_sim_state(start)
                for t, action in enumerate(sequence):
                    self._simulate(action)
                    out[n, t] = self._points()
        finally:
            self.set_sim_state(start)
        return out



class SimState(PointRollouts):
    """PointRollouts for a MuJoCo scene: ``self.model`` and ``self.data`` hold the simulation."""

    def get_sim_state(self) -> np.ndarray:
        """The full integration state as float64 (S,)."""
        state = np.empty(mujoco.mj_stateSize(self.model, STATE_SPEC))
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def set_sim_state(self, state) -> None:
        state = np.asarray(state, dtype=np.float64)
        size = mujoco.mj_stateSize(self.model, STATE_SPEC)
        if state.shape != (size,):
            raise ForesightError(f"state: expected a float array of shape ({size},), got shape {state.shape}")
        mujoco.mj_setState(self.model, self.data, state, STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
