"""Exact save and restore of a MuJoCo simulation, for oracle planners (DESIGN.md's contract)."""
import numpy as np

import mujoco  # (foresight/__init__.py, imported first, has chosen EGL)

from foresight.errors import ForesightError

# Positions, velocities, controls, solver warm start and time: restoring this makes the following
# steps bit-identical (FULLPHYSICS would omit the warm start).
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class SimState:
    """Mixed into an environment with ``self.model`` and ``self.data``."""

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
