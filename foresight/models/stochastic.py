"""A stochastic video model, SV2P-style: CDNA / DNA / SNA conditioned on a time-invariant latent.

Babaeizadeh, Finn, Erhan, Campbell & Levine 2018, "Stochastic Variational Video Prediction" (SV2P).

The deterministic network (``models.video``) cannot say that a push may go one way or another: trained with
a squared error it predicts the blurred mean of the possible futures. SV2P adds a latent z that picks one:

    prior      p(z) = N(0, I), z (B, L): one per sequence, the same at every step (SV2P's time-invariant latent)
    posterior  q(z | x_0..T) = N(mean, exp(logvar)): a small conv net over every frame of the training
               window, stacked along channels (B, (T+1) C, H, W)
    generator  the CDNA / DNA / SNA network with z concatenated to every action (its action_dim is A + L):
               z enters exactly where the action does, tiled over the bottleneck (enc3)

Training minimises the negative evidence lower bound: the video loss of a rollout with z ~ q (drawn with the
reparameterisation trick), plus beta KL(q || p) (``kl_weight``; SV2P raises beta from 0). At test time and
when planning, z is drawn from the prior: each draw is one possible future; z = 0, the prior mean, a
typical one.

SV2P trains in stages: the generator alone, then the posterior with beta = 0, then beta raised. Here the
first stage can be a trained deterministic video run: ``init_from_video`` copies its weights and gives the
latent's input channels zero weights, so the stochastic model starts out predicting exactly what the
deterministic model does, whatever z is; training then teaches it to use z.

API:
    config = StochasticVideoConfig.small("cdna", image_size=(32, 32), channels=3, action_dim=2, window=10)
    model = StochasticVideoModel(config)
    z = model.sample_latents(n, generator)                             # (n, L) from the prior
    out = model(frames, actions, pixels=p, num_context=2, latent=z)    # -> VideoPrediction
    terms = model.loss(frames, actions, kl_weight=1e-3, generator=g)  # the video terms, "kl" and "loss"
    init_from_video(model, video_state_dict)                           # start from a deterministic model
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from foresight.errors import ForesightError
from foresight.models.video import VideoPrediction, VideoPredictionConfig, VideoPredictionModel
from foresight.recipes import spec

__all__ = ["StochasticVideoConfig", "StochasticVideoModel", "Posterior", "VideoPrediction", "init_from_video",
           "kl_divergence"]


# -----------------------------------------------------------------------------
# configuration


@dataclass(frozen=True, kw_only=True)
class StochasticVideoConfig(VideoPredictionConfig):
    """The deterministic network's fields (``VideoPredictionConfig``; ``action_dim`` is the environment's
    action size A, as the planner reads it) and the latent's. One flat dataclass, so recipe.json's
    model_config reads back with ``recipes.from_dict`` like the video model's. ``network()`` is the config of
    the network inside, whose actions carry z: build the model with ``StochasticVideoModel``."""

    latent_dim: int = spec(8, min=1, help="L: dimensions of z, one draw per sequence (time-invariant)")
    posterior_widths: tuple[int, ...] = spec((16, 32, 64), min=1, help="channels of the posterior's stride-2 "
                                                                       "convolutions")
    window: int = spec(min=2, help="frames the posterior reads, T + 1 = train.context + train.horizon (set by "
                                   "the learner)")

    def checks(self):
        yield from super().checks()
        if not self.posterior_widths:
            yield "posterior_widths", "at least one width"

    def network(self) -> VideoPredictionConfig:
        """The deterministic network's config: its actions are [action (A), z (L)]."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(VideoPredictionConfig)}
        return VideoPredictionConfig(**{**fields, "action_dim": self.action_dim + self.latent_dim})


# -----------------------------------------------------------------------------
# the latent


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor | None = None,
                  prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(prior_mean, exp(prior_logvar))) of diagonal Gaussians (B, L) -> (B,),
    summed over the latent's dimensions; the prior defaults to N(0, I)."""
    prior_mean = torch.zeros_like(mean) if prior_mean is None else prior_mean
    prior_logvar = torch.zeros_like(logvar) if prior_logvar is None else prior_logvar
    kl = 0.5 * (prior_logvar - logvar + (logvar.exp() + (mean - prior_mean) ** 2) / prior_logvar.exp() - 1)
    return kl.sum(-1)


class Posterior(nn.Module):
    """q(z | x_0..T): the window's frames stacked along channels, stride-2 convolutions (each halves H and
    W), a 1x1 convolution to [mean, logvar] averaged over the image. The last layer starts at zero, so q
    starts as the prior N(0, I) (KL 0) and learns only what helps predict the frames."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], latent_dim: int):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(1, w), nn.ReLU()]
            c = w
        self.convs = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 2 * latent_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T+1, C, H, W) -> mean, logvar, each (B, L), float32."""
        x = frames.flatten(1, 2)  # (B, (T+1) C, H, W)
        h = self.convs(x)  # (B, widths[-1], H / 2^n, W / 2^n)
        mean, logvar = self.head(h).float().mean((2, 3)).chunk(2, 1)
        return mean, logvar


# -----------------------------------------------------------------------------
# the model


class StochasticVideoModel(nn.Module):
    """SV2P: the video network conditioned on z; the posterior for training. See the module docstring."""

    def __init__(self, config: StochasticVideoConfig):
        super().__init__()
        if not isinstance(config, StochasticVideoConfig):
            raise ForesightError(f"config: expected a StochasticVideoConfig, got {type(config).__name__}")
        self.config = config  # action_dim = A, the environment's (the planner reads it)
        self.latent_dim = config.latent_dim
        self.video = VideoPredictionModel(config.network())  # action_dim = A + L
        self.posterior = Posterior(config.window * config.channels, config.posterior_widths, config.latent_dim)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, L) draws from the prior N(0, I), on the model's device; a seeded generator repeats them."""
        device = generator.device if generator is not None else self.video.enc0.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return z.to(self.video.enc0.weight.device)

    def forward(self, frames, actions, states=None, pixels=None, num_context: int = 2,
                latent: torch.Tensor | None = None, sample_prob: float = 0.0,
                generator: torch.Generator | None = None) -> VideoPrediction:
        """``VideoPredictionModel.forward`` with a latent: actions (B, T, A); latent (B, L), one z per
        sequence, or None: drawn from the prior with ``generator`` (a seeded one makes it repeatable)."""
        B = self._check_actions(actions)
        if latent is None:
            latent = self.sample_latents(B, generator)
        return self.video(frames, self._with_latent(actions, latent), states, pixels, num_context=num_context,
                          sample_prob=sample_prob, generator=generator)

    def loss(self, frames, actions, states=None, num_context: int = 2, sample_prob: float = 0.0,
             generator: torch.Generator | None = None, points=None, track_weight: float = 0.0,
             image_loss: str = "mse", kl_weight: float = 1e-3) -> dict[str, torch.Tensor]:
        """The negative ELBO of a window: z ~ q(z | frames) by the reparameterisation trick (noise drawn with
        ``generator``), the deterministic network's loss with z beside every action (every term of
        ``VideoPredictionModel.loss``, designated-pixel tracking included), plus kl_weight x KL(q || p),
        averaged over the batch and summed over z's dimensions.

        frames (B, T + 1, C, H, W) with T + 1 = config.window; actions (B, T, A).
        Returns the video terms, "kl", and "loss" (to minimise)."""
        self._check_actions(actions)
        W = self.config.window
        if not (torch.is_tensor(frames) and frames.dim() == 5 and frames.shape[1] == W == actions.shape[1] + 1):
            raise ForesightError(f"frames: the posterior reads windows of {W} frames (config.window) and "
                                 f"{W - 1} actions, got frames {_shape(frames)} and actions {_shape(actions)}")
        mean, logvar = self.posterior(frames.float())  # (B, L) each
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * noise  # (B, L)
        terms = self.video.loss(frames, self._with_latent(actions, z), states, num_context=num_context,
                                sample_prob=sample_prob, generator=generator, points=points,
                                track_weight=track_weight, image_loss=image_loss)
        kl = kl_divergence(mean, logvar).mean()
        return {**terms, "kl": kl, "loss": terms["loss"] + kl_weight * kl}

    # --- z beside every action

    def _with_latent(self, actions, latent):
        B, T = actions.shape[:2]
        L = self.latent_dim
        if not (torch.is_tensor(latent) and latent.shape == (B, L)):
            raise ForesightError(f"latent: expected shape ({B}, {L}) (one z per sequence, latent_dim={L}), "
                                 f"got {_shape(latent)}")
        z = latent.to(actions.device, actions.dtype)[:, None].expand(B, T, L)
        return torch.cat([actions, z], 2)  # (B, T, A + L)

    def _check_actions(self, actions) -> int:
        A = self.config.action_dim
        if not (torch.is_tensor(actions) and actions.dim() == 3 and actions.shape[2] == A):
            raise ForesightError(f"actions: expected shape (B, T, {A}) (action_dim={A}), got {_shape(actions)}")
        return actions.shape[0]


# -----------------------------------------------------------------------------
# starting from a deterministic model


def init_from_video(model: StochasticVideoModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a trained deterministic ``VideoPredictionModel``'s weights (its config: ``model.config.network()``
    with action_dim A) into ``model.video``: every tensor as it is, except the layers that read the action
    (enc3 over the bottleneck, and state_head with a state), whose weights for z's L input channels, inserted
    right after the action's, are zero. The model then predicts what the deterministic one does, for every z.
    The posterior keeps its own (initial) weights. Tensors that do not fit are named in the error."""
    cfg = model.video.config
    A, L = model.config.action_dim, model.latent_dim
    latent_at = {"enc3.weight": cfg.widths[3] + A, "state_head.weight": A}  # input columns: [..., action, z, state]
    own = model.video.state_dict()
    missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    weights, differ = {}, []
    for key, mine in own.items():
        if key not in state_dict:
            continue
        old = state_dict[key]
        expected = mine.shape if key not in latent_at else (mine.shape[0], mine.shape[1] - L, *mine.shape[2:])
        if tuple(old.shape) != tuple(expected):
            differ.append(f"{key}: video model {tuple(old.shape)} vs {tuple(expected)} expected")
            continue
        if key in latent_at:
            at = latent_at[key]
            old = torch.cat([old[:, :at], old.new_zeros(old.shape[0], L, *old.shape[2:]), old[:, at:]], 1)
        weights[key] = old
    if missing or extra or differ:
        parts = ([f"shapes differ ({'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''})"] if differ else []) \
            + ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else [])
        raise ForesightError(f"the video model does not fit this stochastic model's network: {', '.join(parts)}")
    model.video.load_state_dict(weights)


def _shape(x):
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
