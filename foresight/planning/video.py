"""A video prediction model as the planner sees it: rollouts of designated-pixel distributions from the latest
camera frames (visual foresight: Finn & Levine 2017, Ebert et al. 2018).

The model may work on smaller images than the camera's: camera frames are then area-averaged to its size and
pixels scaled (``pixels.resize_frames`` / ``scale_points``, as in training).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from foresight import pixels, viz
from foresight.errors import ForesightError
from foresight.planning.costs import Rollout
from foresight.planning.tracking import make_tracking


class VideoPredictor:
    """The video model in inference mode, batched over action sequences. ``trained_env`` is the training data's
    environment ({"id", "kwargs"}, from the run), when known: a suite must run it at the same time scale
    (``action_repeat``). A stochastic model (``latent_dim`` > 0, models/stochastic.py) predicts each sequence under
    the latents it is given."""

    def __init__(self, model, context: int = 2, trained_env: dict | None = None):
        if not hasattr(model, "config") or not hasattr(model.config, "transform"):
            raise ForesightError("--model: this model predicts no pixel distributions (a video prediction "
                                 "model, CDNA / DNA / SNA, is needed for designated pixels)")
        self.model, self.context = model.eval(), context
        self.image_size = tuple(model.config.image_size)
        self.trained_env = trained_env
        self.latent_dim = getattr(model, "latent_dim", 0)
        self.seconds = 0.0

    @property
    def members(self) -> list[VideoPredictor]:
        return [self]

    def check_env(self, env_id: str, env_kwargs: dict, env, source: str) -> None:
        """The model must read this environment's images and actions, at the time scale it was trained on."""
        cfg = self.model.config
        shape = env.observation_space.shape
        if self.trained_env and self.trained_env.get("id") not in (None, env_id):
            raise ForesightError(f"--model: trained on {self.trained_env['id']} data, the suite runs {env_id}")
        if shape[-1] != cfg.channels or cfg.action_dim != env.action_space.shape[0]:
            raise ForesightError(f"--model: predicts {cfg.channels}-channel images with {cfg.action_dim}-d actions, "
                                 f"{env_id} gives {shape} images with {env.action_space.shape[0]}-d actions")
        if self.trained_env:
            trained = self.trained_env.get("kwargs", {}).get("action_repeat", 1)
            if self.trained_env.get("id") == env_id and trained != env_kwargs.get("action_repeat", 1):
                raise ForesightError(f"{source}: key 'env_kwargs.action_repeat': the model was trained with "
                                     f"action_repeat = {trained}, the suite runs {env_kwargs.get('action_repeat', 1)}")

    def frames(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Camera frames [(H, W, C) uint8] -> the model's input (T, C, h, w) float in [0, 1]."""
        x = pixels.resize_frames(np.stack(frames), self.image_size)
        return torch.as_tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255

    def __call__(self, frames: torch.Tensor, past: torch.Tensor, actions: torch.Tensor, dists: torch.Tensor,
                 amp: str = "off", latents: torch.Tensor | None = None):
        """frames (Tc, C, H, W) float, past (Tc-1, A), actions (N, T, A), dists (K, H, W) ->
        predicted frames (N, T, C, H, W) and distributions (N, T, K, H, W) after each action.
        amp = "bf16": bf16 autocast (the suite's ``mpc.amp``). latents (P, L), a stochastic model's: every sequence
        under every latent, in one batch -> (P * N, ...), latent-major."""
        start = time.perf_counter()
        extra = {"shared_context": True}  # every sequence starts from the same frames: the context runs once
        if latents is not None:  # ... but not under a latent per sequence
            extra = {"latent": latents.repeat_interleave(actions.shape[0], 0)}  # (P * N, L)
            actions = actions.repeat(len(latents), 1, 1)
        N = actions.shape[0]
        f = frames[None].expand(N, *frames.shape)
        a = torch.cat([past[None].expand(N, *past.shape), actions], 1)
        p = dists[None].expand(N, *dists.shape)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = self.model(f, a, pixels=p, num_context=self.context, **extra)
        self.seconds += time.perf_counter() - start
        return out.frames[:, self.context - 1:].float(), out.pixels.float()


class VideoEnsemble:
    """Video models trained apart (other seeds, other data), planned with as one: each plan is predicted by every
    member and the cost aggregated over them (``costs.Cost``: the mean, plus ``cost.spread`` x their spread), as
    PETS scores plans under its ensemble (Chua et al. 2018). Where the members disagree the model is unsure, and a
    plan that only one member believes in is not chosen."""

    def __init__(self, members: list[VideoPredictor]):
        first = members[0]
        for m in members[1:]:
            a, b = first.model.config, m.model.config
            if (tuple(a.image_size), a.channels, a.action_dim, first.context) != \
                    (tuple(b.image_size), b.channels, b.action_dim, m.context):
                raise ForesightError(f"--model: ensemble members must share image size, channels, action size and "
                                     f"context; {tuple(a.image_size)} {a.channels} {a.action_dim} {first.context} vs "
                                     f"{tuple(b.image_size)} {b.channels} {b.action_dim} {m.context}")
        self.members = members
        self.model, self.context, self.image_size = first.model, first.context, first.image_size
        self.trained_env, self.latent_dim = first.trained_env, 0

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.members)

    def check_env(self, env_id: str, env_kwargs: dict, env, source: str) -> None:
        for m in self.members:
            m.check_env(env_id, env_kwargs, env, source)

    def frames(self, frames: list[np.ndarray]) -> torch.Tensor:
        return self.members[0].frames(frames)


class VideoRollouts:
    """Rollouts of the designated pixels' distributions from the latest frames, for one task.

    Before the first step the scene is at rest: the context repeats the first frame, with zero actions. After the
    executed actions the tracker (``mpc.track``) says where the designated pixels are; the model's own
    prediction of the chosen plan is kept for it (and for the pictures)."""

    def __init__(self, predictor: VideoPredictor | VideoEnsemble, env, task, obs, track: str = "model",
                 amp: str = "off", latent_samples: int = 1):
        self.predictor, self.amp = predictor, amp
        # a stochastic model's latents, drawn once per task from its prior: every plan is scored under the same
        # draws (common random numbers), so plans are compared with each other, not with luck
        self.latents = None
        if predictor.latent_dim:
            self.latents = predictor.model.sample_latents(latent_samples, torch.Generator().manual_seed(task.seed))
        self.context = predictor.context
        H, W = obs.shape[:2]
        self.camera_size, self.image_size = (H, W), predictor.image_size
        self.frames = [obs] * self.context
        rest = getattr(env.unwrapped, "rest_action", None)  # the action that keeps the scene still (0 by default)
        self.past = [rest() if rest else np.zeros(env.action_space.shape, np.float32)] * (self.context - 1)
        self.known = task.designated  # where the planner knows the designated pixels are (camera pixels)
        self.dist = pixels.delta_distribution(self._to_model(task.designated)[None], *self.image_size)[0]  # (K, h, w)
        self.tracker = make_tracking(track, obs, task.designated, self.image_size, self.camera_size,
                                     task.indices)
        self.agent_path = getattr(env.unwrapped, "agent_path", None)
        self.executed, self.predicted = 0, None  # steps since the last plan, its (frames, dists)
        self.model_seconds = 0.0

    def _to_model(self, points) -> torch.Tensor:
        return torch.as_tensor(pixels.scale_points(points, self.camera_size, self.image_size), dtype=torch.float32)

    def observe(self, obs, info, action) -> None:
        self.frames.append(obs), self.past.append(np.asarray(action, np.float32))
        self.tracker.observe(obs, info)
        self.executed += 1

    def begin(self, obs, info) -> None:
        if self.executed:  # where the executed actions took the designated pixels
            known, carried = self.tracker.locate(self.predicted[1][0, self.executed - 1])
            self.known = known
            self.dist = carried if carried is not None else \
                pixels.delta_distribution(self._to_model(known)[None], *self.image_size)[0]
        c = self.context
        self.ctx = self.predictor.frames(self.frames[-c:])
        self.past_t = torch.as_tensor(np.stack(self.past[-(c - 1):]))
        # the objects' pixels now and the agent's path, in the model's pixels (float32 as the path is)
        self.now = pixels.scale_points(np.asarray(self.known, np.float32), self.camera_size, self.image_size)

    def _predict(self, actions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(frames, dists) of each particle: each ensemble member's, each latent draw's, or the one model's."""
        before = self.predictor.seconds
        if self.latents is not None:
            frames, dists = self.predictor(self.ctx, self.past_t, actions, self.dist, self.amp, self.latents)
            out = list(zip(frames.chunk(len(self.latents)), dists.chunk(len(self.latents))))
        else:
            out = [m(self.ctx, self.past_t, actions, self.dist, self.amp) for m in self.predictor.members]
        self.model_seconds += self.predictor.seconds - before
        return out

    def __call__(self, actions: torch.Tensor) -> Rollout | list[Rollout]:
        """One ``Rollout`` per particle (a list when there are several; the cost aggregates them)."""
        path = None
        if self.agent_path is not None:
            def path(a):
                return pixels.scale_points(self.agent_path(a), self.camera_size, self.image_size)
        rollouts = [Rollout(actions=actions, dists=dists, frames=frames, now=self.now, agent_path=path)
                    for frames, dists in self._predict(actions)]
        return rollouts[0] if len(rollouts) == 1 else rollouts

    def chosen(self, plan: torch.Tensor) -> None:
        """The chosen plan's prediction, averaged over the particles (a mixture of distributions is one)."""
        particles = self._predict(plan[None])
        self.predicted = tuple(torch.stack(x).mean(0) for x in zip(*particles))
        self.executed = 0

    def pictures(self, step: int, scale: int) -> list[np.ndarray]:
        """The designated-pixel heat map and the predicted frame of the step-th executed action, at the camera's
        size."""
        import cv2

        H, W = self.camera_size
        frame = self.frames[-1]
        heat = cv2.resize(self.predicted[1][0, step].sum(0).numpy(), (W, H), interpolation=cv2.INTER_NEAREST)
        pred = (self.predicted[0][0, step].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        pred = cv2.resize(pred, (W, H), interpolation=cv2.INTER_NEAREST).reshape(H, W, -1)
        return [viz.heatmap(frame, heat, scale), viz.enlarge(pred, scale)]
