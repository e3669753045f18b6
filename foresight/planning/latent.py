"""A latent model as the planner sees it (Embed to Control, Watter et al. 2015; its VAE baseline; PCC, Levine et
al. 2020; PC3, Shu et al. 2020): rollouts of
latent means toward a goal image's latent, and the iLQR planner on the model's local linearisation.

The model encodes the current observation and the goal image; a plan's cost is, with the suite's terms
goal_distance and effort (``costs.py``),

    c(u_0..u_{T-1}) = sum_{t=1}^{T} w_t ||z_t - z_goal||^2 + alpha sum_{t=0}^{T-1} ||u_t / h||^2
    z_0 = mean of Q(z | x_now),  z_{t+1} = mean of the predicted next latent,  w_t = 1, w_T = last_weight

searched by the shared CEM (planner 'cem') or by iLQR (planner 'ilqr', ``ilqr.py``). Evaluation as PCC (Levine
et al. 2020) and PC3 (Shu et al. 2020) run it: the percentage of the task's steps in which the true state lies in
the goal region (``suites.judge``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from foresight import viz
from foresight.errors import ForesightError
from foresight.planning.costs import Rollout
from foresight.planning.ilqr import LatentILQR, rollout


class LatentModel:
    """The model as the planner uses it: images to latent means, in inference mode."""

    def __init__(self, model, trained_env: dict | None = None):
        cfg = getattr(model, "config", None)
        if cfg is None or not all(hasattr(model, m) for m in ("encode", "transition", "linearize")):
            raise ForesightError("--model: not a latent model (E2C, its VAE baseline, PCC or PC3 is needed for latent "
                                 "planning)")
        self.model, self.config, self.trained_env = model.eval(), cfg, trained_env

    def check_env(self, env_id: str, env_kwargs: dict, env, source: str) -> None:
        """The model must encode this environment's frames (``stack`` of them along the channels) and actions."""
        H, W, C = env.observation_space.shape
        c, h, w = self.config.image_shape
        if (h, w) != (H, W) or c % C:
            raise ForesightError(f"--model: encodes {h}x{w} images of {c} channel(s), the environment gives {H}x{W}x{C}"
                                 f" frames")
        if self.config.action_dim != env.action_space.shape[0]:
            raise ForesightError(f"--model: takes {self.config.action_dim}-d actions, the environment's are "
                                 f"{env.action_space.shape[0]}-d")
        self.stack = c // C

    def encode(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The latent mean (Z,) of the last `stack` frames (H, W, C) uint8, oldest first along the channels."""
        x = np.concatenate(frames[-self.stack:], axis=-1)  # (H, W, stack * C)
        x = torch.as_tensor(x, dtype=torch.float32).permute(2, 0, 1)[None] / 255
        with torch.no_grad():  # not inference mode: the VAE's iLQR differentiates the transition at this latent
            return self.model.encode(x).mean[0]

    @property
    def decodes(self) -> bool:
        return hasattr(self.model, "decode")  # PC3 has no decoder

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """The last frame of the decoded observation, uint8 (H, W, C)."""
        with torch.no_grad():
            x = self.model.decode(z[None])[0]  # (stack * C, H, W)
        c = x.shape[0] // self.stack
        return (x[-c:].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


class LatentRollouts:
    """Rollouts of latent means from the latest observation (``stack`` frames; at rest before the first step: the
    first frame repeated), each step's squared distance to the goal image's latent."""

    def __init__(self, latent: LatentModel, task, obs):
        self.latent = latent
        self.frames = [obs] * latent.stack
        self.goal = latent.encode([task.goal_frame] * latent.stack)  # (Z,)
        self.model_seconds = 0.0

    def observe(self, obs, info, action) -> None:
        self.frames = (self.frames + [obs])[-self.latent.stack:]

    def begin(self, obs, info) -> None:
        start = time.perf_counter()
        self.z0 = self.latent.encode(self.frames)
        self.model_seconds += time.perf_counter() - start

    def __call__(self, actions: torch.Tensor) -> Rollout:
        start = time.perf_counter()
        z = rollout(self.latent.model, self.z0.expand(len(actions), -1), actions)  # (N, T+1, Z)
        self.model_seconds += time.perf_counter() - start
        return Rollout(actions=actions, to_goal=((z[:, 1:] - self.goal) ** 2).sum(-1))

    def chosen(self, plan) -> None:
        pass

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        """The model's decoding of the observation it planned from (none for a model without a decoder)."""
        return [viz.enlarge(self.latent.decode(self.z0), scale)] if self.latent.decodes else []


class ILQRPlanner:
    """iLQR on the latent model's own local linearisation, warm-started from the last plan shifted; ``rng``
    draws the settings' random initial plans."""

    def __init__(self, rollouts: LatentRollouts, cost, low, high, settings, rng=None):
        self.rollouts = rollouts
        self.ilqr = LatentILQR(rollouts.latent.model, cost, rollouts.goal, low, high, settings, rng)
        self.replans = 0

    @property
    def model_seconds(self) -> float:
        return self.rollouts.model_seconds

    def observe(self, obs, info, action) -> None:
        self.rollouts.observe(obs, info, action)

    def act(self, obs, info, steps: int) -> np.ndarray:
        self.rollouts.begin(obs, info)
        start = time.perf_counter()
        plan, _ = self.ilqr.plan(self.rollouts.z0)
        self.ilqr.shift(steps)
        self.rollouts.model_seconds += time.perf_counter() - start  # iLQR is all model: rollouts and Jacobians
        self.replans += 1
        return plan[:steps].numpy()

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        return self.rollouts.pictures(step, scale)
