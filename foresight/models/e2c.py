"""Embed to Control (E2C): a locally linear latent dynamics model learned from pixels, and its VAE baseline.

Watter, Springenberg, Boedecker & Riedmiller, "Embed to Control: A Locally Linear Latent Dynamics Model
for Control from Raw Images", NeurIPS 2015 (arXiv:1506.07365). The paper's names are kept:

    encoder   Q_phi(z_t | x_t)      = N(mu_t, Sigma_t),  Sigma_t = diag(sigma_t^2)
    transition h_psi^trans(z_t)     -> v_t, r_t, B_t, o_t;   A_t = I + v_t r_t^T   (rank-one update of I)
              Q_psi(z^_{t+1} | z_t, u_t) = N(A_t mu_t + B_t u_t + o_t,  C_t = A_t Sigma_t A_t^T)
    decoder   P_theta(x | z): Bernoulli (logits) or Gaussian (mean sigmoid(.), fixed std) per pixel

The network h_psi^trans sees the *sample* z_t ~ Q_phi (the paper's Fig. 1), while the Gaussian it defines
is centred on A_t mu_t and carries the encoder's covariance pushed through A_t.

Loss for one pair (x_t, u_t, x_{t+1}); pixels and latent dimensions are summed, the batch averaged:

    recon         -log P(x_t | z_t)                     z_t ~ Q_phi(. | x_t)
    recon_next    -log P(x_{t+1} | z^_{t+1})            z^_{t+1} ~ Q_psi(. | z_t, u_t)
    kl_prior      KL(Q_phi(z_t | x_t) || N(0, I))
    kl_transition KL(Q_psi(z^_{t+1} | mu_t, u_t) || Q_phi(z_{t+1} | x_{t+1}))
    loss          recon + recon_next + beta * kl_prior + lam * kl_transition

The KL direction is the paper's: the *predicted* distribution is the first argument and the encoding of the
real next frame the second (L = sum L_bound + lambda KL(Q_psi(Z^ | mu_t, u_t) || Q_phi(Z | x_{t+1}))).
Its closed form, with N0 = N(m0, A S0 A^T), N1 = N(m1, S1), S0 = diag(s0), S1 = diag(s1), A = I + v r^T, k = dim:

    KL(N0 || N1) = 1/2 [ tr(S1^-1 A S0 A^T) + (m1 - m0)^T S1^-1 (m1 - m0) - k + log det S1 - log det(A S0 A^T) ]
    diag(A S0 A^T)_i = s0_i (1 + 2 v_i r_i) + v_i^2 (r^T S0 r)                      (so the trace is O(k))
    log det(A S0 A^T) = 2 log|1 + r^T v| + sum_i log s0_i                          (matrix determinant lemma)

The baseline (config ``model="vae"``) keeps the encoder, decoder and loss terms but replaces the locally linear
transition by a free-form MLP (z_t, u_t) -> (mean, diagonal log variance) of z_{t+1}; its transition KL is the
same direction between two diagonal Gaussians. Its `linearize` returns autograd Jacobians.

Images are float (B, C, H, W) in [0, 1]; for the pendulum C = 2 stacked grey frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from foresight.errors import ForesightError
from foresight.recipes import spec

MODELS = ("e2c", "vae")
ENCODERS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) and 1/var finite; far outside what a trained encoder uses


# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class LatentConfig:
    """What every latent model's config holds (E2C's, PCC's, PC3's): the image, the sizes, the encoder and the
    transition's widths. Each model's config adds its own terms and redefines ``model`` and the defaults."""

    image_shape: tuple[int, int, int] = spec(min=1, help="(C, H, W) of the model's input image")
    latent_dim: int = spec(min=1, help="Z")
    action_dim: int = spec(min=1, help="U")
    model: str = spec("e2c", choices=MODELS, help="the model family")
    encoder: str = spec("mlp", choices=ENCODERS, help="'mlp': fully connected on the flattened image | 'conv': "
                                                      "strided convolutions")
    encoder_widths: tuple[int, ...] = spec((150, 150, 150), min=1, help="hidden layers (after the convolutions "
                                                                      "for 'conv')")
    transition_widths: tuple[int, ...] = spec((100, 100), min=1, help="hidden layers of the transition network")
    conv_channels: tuple[int, ...] = spec((32, 64, 128, 256), min=1, help="'conv' only: each layer halves H and W")

    def checks(self):
        if self.encoder == "conv":
            if not self.conv_channels:
                yield "conv_channels", "at least one layer for encoder='conv'"
                return
            factor = 2 ** len(self.conv_channels)
            _, h, w = self.image_shape
            if h % factor or w % factor:
                yield "image_shape", (f"H and W multiples of {factor} for {len(self.conv_channels)} stride-2 conv "
                                      f"layers (conv_channels={self.conv_channels})")


@dataclass(frozen=True)
class E2CConfig(LatentConfig):
    """Architecture and loss weights of an E2C model (or its VAE baseline). Checked where it is read
    (``foresight.recipes.from_dict``, which also turns lists into tuples); a config built in Python is taken
    as it is."""

    model: str = spec("e2c", choices=MODELS, help="'e2c': locally linear transition | 'vae': free-form MLP "
                                                 "transition (baseline)")
    transition_widths: tuple[int, ...] = spec((100, 100), min=1, help="hidden layers of h_psi^trans")
    decoder_widths: tuple[int, ...] = spec((200, 200), min=1, help="hidden layers (before the deconvolutions "
                                                                  "for 'conv')")
    likelihood: str = spec("bernoulli", choices=LIKELIHOODS, help="'bernoulli' (decoder gives logits) | "
                                                                  "'gaussian' (fixed pixel_std)")
    pixel_std: float = spec(0.1, above=0.0, help="'gaussian' only: the std of each pixel's likelihood")
    beta: float = spec(1.0, min=0.0, help="weight of KL(Q_phi(z_t | x_t) || N(0, I))")
    lam: float = spec(0.25, min=0.0, help="lambda, weight of KL(Q_psi(z^_{t+1}) || Q_phi(z_{t+1} | x_{t+1}))")


PRESETS = {  # the recipe's model.preset: the fields it sets (a recipe's keys override them)
    # the paper's planar system: 40x40 grey image, z=2, encoder 150-150-150, decoder 200-200, transition 100-100
    "planar": dict(image_shape=(1, 40, 40), latent_dim=2, action_dim=2, encoder="mlp",
                   encoder_widths=(150, 150, 150), decoder_widths=(200, 200), transition_widths=(100, 100)),
    # the paper's pendulum swing-up: two stacked 48x48 grey frames, z=3, encoder/decoder 800-800, transition 100-100
    "pendulum": dict(image_shape=(2, 48, 48), latent_dim=3, action_dim=1, encoder="mlp",
                     encoder_widths=(800, 800), decoder_widths=(800, 800), transition_widths=(100, 100)),
    # PCC / PC3's cart-pole (the E2C paper has none), with PCC / PC3's sizes: models/pcc.py's PRESETS says how
    "cartpole": dict(image_shape=(2, 80, 80), latent_dim=8, action_dim=1, encoder="conv", conv_channels=(32, 32, 10),
                     encoder_widths=(200,), decoder_widths=(200,), transition_widths=(100, 100)),
    # 64x64 colour PointPush: four stride-2 convolutions (32-64-128-256) and a 256-unit layer each way
    "point_push": dict(image_shape=(3, 64, 64), latent_dim=8, action_dim=2, encoder="conv",
                       conv_channels=(32, 64, 128, 256), encoder_widths=(256,), decoder_widths=(256,),
                       transition_widths=(100, 100)),
}


# ----------------------------------------------------------------------------------------------------------
# The predicted next latent of E2C: a Gaussian with rank-one-updated covariance


def kl_locally_linear_to_diagonal(mean0, var0, v, r, mean1, var1):
    """KL( N(mean0, A diag(var0) A^T) || N(mean1, diag(var1)) ) with A = I + v r^T, in closed form.

    All arguments (..., Z); returns (...). O(Z) per sample: no Z x Z matrix is formed.
    """
    k = mean0.shape[-1]
    r_s0_r = (r * r * var0).sum(-1, keepdim=True)  # r^T S0 r, (..., 1)
    diag_c0 = var0 * (1 + 2 * v * r) + v * v * r_s0_r  # diag(A S0 A^T), (..., Z)
    trace = (diag_c0 / var1).sum(-1)
    mahalanobis = ((mean1 - mean0) ** 2 / var1).sum(-1)
    det_a = 1 + (v * r).sum(-1)  # det(I + v r^T) = 1 + r^T v  (matrix determinant lemma)
    # tiny floor: a singular A makes the KL infinite; keep it finite so one bad sample cannot NaN the batch
    logdet_c0 = 2 * torch.log(det_a.abs().clamp_min(1e-12)) + torch.log(var0).sum(-1)
    logdet_c1 = torch.log(var1).sum(-1)
    return 0.5 * (trace + mahalanobis - k + logdet_c1 - logdet_c0)


@dataclass(frozen=True)
class LocallyLinearNormal:
    """N(mean, A diag(var0) A^T) with A = I + v r^T, all (B, Z). `mean` is computed eagerly, the rest lazily.

    var0 is the covariance being pushed through A (the encoder's Sigma_t); it is zero when the transition was
    given a point instead of an encoder distribution, and then the distribution is a point mass at `mean`.
    """

    mean: torch.Tensor  # (B, Z)  A mu + B u + o
    var0: torch.Tensor  # (B, Z)  diagonal of Sigma_t
    v: torch.Tensor  # (B, Z)
    r: torch.Tensor  # (B, Z)

    def apply_a(self, x: torch.Tensor) -> torch.Tensor:
        """A x = x + v (r . x) for x (..., B, Z), without forming A."""
        return x + self.v * (self.r * x).sum(-1, keepdim=True)

    @property
    def A(self) -> torch.Tensor:  # (B, Z, Z)
        eye = torch.eye(self.mean.shape[-1], dtype=self.mean.dtype, device=self.mean.device)
        return eye + self.v.unsqueeze(-1) * self.r.unsqueeze(-2)

    @property
    def variance(self) -> torch.Tensor:  # (B, Z) the diagonal of the covariance
        return self.var0 * (1 + 2 * self.v * self.r) + self.v**2 * (self.r**2 * self.var0).sum(-1, keepdim=True)

    @property
    def covariance_matrix(self) -> torch.Tensor:  # (B, Z, Z)
        a = self.A
        return a @ torch.diag_embed(self.var0) @ a.transpose(-1, -2)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        """mean + A (sqrt(var0) * eps), eps ~ N(0, I): a reparameterised sample, (*sample_shape, B, Z)."""
        eps = torch.randn(tuple(sample_shape) + tuple(self.mean.shape), dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.apply_a(self.var0.sqrt() * eps)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def kl(self, other: Normal) -> torch.Tensor:
        """KL(self || other) for a diagonal Normal `other` (B, Z); returns (B,)."""
        return kl_locally_linear_to_diagonal(self.mean, self.var0, self.v, self.r, other.mean, other.variance)

    def to_multivariate_normal(self) -> MultivariateNormal:
        """The same distribution as torch's MultivariateNormal (needs a non-singular covariance)."""
        return MultivariateNormal(self.mean, covariance_matrix=self.covariance_matrix)


# ----------------------------------------------------------------------------------------------------------
# Networks


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def trunk(sizes: list[int]) -> nn.Module:
    """Hidden layers, all followed by ReLU; identity when there are none."""
    return nn.Sequential(mlp(sizes), nn.ReLU()) if len(sizes) > 1 else nn.Identity()


def image_features(cfg: LatentConfig) -> tuple[nn.Module, int]:
    """The encoder's first part and its output size: strided convolutions and a flatten (encoder 'conv'; each
    layer halves H and W) or a flatten of the raw pixels ('mlp')."""
    c, h, w = cfg.image_shape
    if cfg.encoder != "conv":
        return nn.Flatten(), c * h * w
    layers, c_in = [], c
    for c_out in cfg.conv_channels:  # each: (c_in, h, w) -> (c_out, h/2, w/2)
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    factor = 2 ** len(cfg.conv_channels)
    return nn.Sequential(*layers, nn.Flatten()), c_in * (h // factor) * (w // factor)


class Encoder(nn.Module):
    """x (B, C, H, W) -> (mu, logvar) of Q_phi(z | x), each (B, Z); with gaussian=False (PC3's deterministic
    encoder) z (B, Z) alone."""

    def __init__(self, cfg: LatentConfig, gaussian: bool = True):
        super().__init__()
        self.gaussian = gaussian
        self.features, n_in = image_features(cfg)
        self.head = mlp([n_in, *cfg.encoder_widths, (2 if gaussian else 1) * cfg.latent_dim])

    def forward(self, x):
        if not self.gaussian:
            return self.head(self.features(x))
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """z (B, Z) -> per-pixel logits (B, C, H, W); the image is sigmoid(logits)."""

    def __init__(self, cfg):
        super().__init__()
        c, h, w = cfg.image_shape
        if cfg.encoder == "conv":
            chans = cfg.conv_channels[::-1]  # mirror of the encoder
            factor = 2 ** len(chans)
            layers: list[nn.Module] = [
                mlp([cfg.latent_dim, *cfg.decoder_widths, chans[0] * (h // factor) * (w // factor)]),
                nn.ReLU(),
                nn.Unflatten(1, (chans[0], h // factor, w // factor)),
            ]
            for c_in, c_out in zip(chans, list(chans[1:]) + [c]):  # each doubles H and W
                layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            self.net = nn.Sequential(*layers[:-1])  # no ReLU on the logits
        else:
            self.net = nn.Sequential(mlp([cfg.latent_dim, *cfg.decoder_widths, c * h * w]), nn.Unflatten(1, (c, h, w)))

    def forward(self, z):
        return self.net(z)


class LocallyLinearTransition(nn.Module):
    """h_psi^trans: z (B, Z) -> v (B, Z), r (B, Z), B (B, Z, U), o (B, Z), the pieces of A = I + v r^T."""

    def __init__(self, cfg: E2CConfig):
        super().__init__()
        z, u = cfg.latent_dim, cfg.action_dim
        self.z, self.u = z, u
        self.trunk = trunk([z, *cfg.transition_widths])
        n_hidden = cfg.transition_widths[-1] if cfg.transition_widths else z
        self.head = nn.Linear(n_hidden, 3 * z + z * u)
        with torch.no_grad():  # start near A = I, B = 0, o = 0 so early KLs stay moderate
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, z):
        out = self.head(self.trunk(z))
        v, r, o, b = out.split([self.z, self.z, self.z, self.z * self.u], dim=-1)
        return v, r, b.unflatten(-1, (self.z, self.u)), o


class FreeFormTransition(nn.Module):
    """VAE baseline (and PCC / PC3's transition): (z, u) -> mean and log variance of z_{t+1}, each (B, Z). The
    mean is z + a learned step (the skip connection of PCC's and PC3's code)."""

    def __init__(self, cfg: LatentConfig):
        super().__init__()
        z, u = cfg.latent_dim, cfg.action_dim
        self.trunk = trunk([z + u, *cfg.transition_widths])
        n_hidden = cfg.transition_widths[-1] if cfg.transition_widths else z + u
        self.head = nn.Linear(n_hidden, 2 * z)

    def forward(self, z, u):
        step, logvar = self.head(self.trunk(torch.cat([z, u], dim=-1))).chunk(2, dim=-1)
        return z + step, logvar.clamp(*LOGVAR_RANGE)


# ----------------------------------------------------------------------------------------------------------
# The model


class LatentModule(nn.Module):
    """What every latent model here (E2C, the VAE baseline, PCC, PC3) shares: input checks whose errors name
    the argument, the shape seen and the shape expected, and autograd linearisation of a transition mean."""

    config: LatentConfig

    # -- input checks: shape errors name the argument, the shape seen and the shape expected --

    def _check_images(self, name: str, x) -> torch.Tensor:
        c, h, w = self.config.image_shape
        if not isinstance(x, torch.Tensor):
            raise ForesightError(f"{name}: expected a torch.Tensor (B, {c}, {h}, {w}), got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ForesightError(f"{name}: expected shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ForesightError(f"{name}: expected float images in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
        return x

    def _check_vectors(self, name: str, x, size: int, what: str, batch: int | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ForesightError(f"{name}: expected a torch.Tensor (B, {size}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != size or (batch is not None and x.shape[0] != batch):
            b = "B" if batch is None else str(batch)
            raise ForesightError(f"{name}: expected shape ({b}, {size}) ({what}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ForesightError(f"{name}: expected a float tensor, got dtype {x.dtype}")
        return x

    def _check_latent(self, name, z, batch=None):
        return self._check_vectors(name, z, self.config.latent_dim, "latent_dim", batch)

    def _check_action(self, name, u, batch):
        return self._check_vectors(name, u, self.config.action_dim, "action_dim", batch)

    def _check_triples(self, x_t, u_t, x_next):
        """A batch of transitions (x_t, u_t, x_{t+1}) for a loss: shapes, batch sizes and pixel range."""
        x_t, x_next = self._check_images("x_t", x_t), self._check_images("x_next", x_next)
        if x_next.shape[0] != x_t.shape[0]:
            raise ForesightError(f"x_next: batch of {x_next.shape[0]} does not match x_t's {x_t.shape[0]}")
        u_t = self._check_action("u_t", u_t, x_t.shape[0])
        for name, x in (("x_t", x_t), ("x_next", x_next)):
            if not ((x >= 0) & (x <= 1)).all():  # also catches NaN; one host sync, cheap next to a step
                raise ForesightError(f"{name}: expected pixel values in [0, 1], got range "
                                     f"[{x.min().item():.3g}, {x.max().item():.3g}]")
        return x_t, u_t, x_next

    def _linearize_by_autograd(self, mean, z: torch.Tensor, u: torch.Tensor | None):
        """A (B, Z, Z), B (B, Z, U), o (B, Z) of ``mean(z, u)`` (B, Z) at (z, u) (u defaults to 0), with o chosen
        so that A z + B u + o equals the mean there."""
        z = self._check_latent("z", z)
        if u is None:
            u = z.new_zeros(z.shape[0], self.config.action_dim)
        u = self._check_action("u", u, z.shape[0])

        def mean_one(z1, u1):  # (Z,), (U,) -> (Z,)
            return mean(z1[None], u1[None])[0]

        a, b = torch.func.vmap(torch.func.jacrev(mean_one, argnums=(0, 1)))(z, u)
        o = mean(z, u) - (a @ z.unsqueeze(-1)).squeeze(-1) - (b @ u.unsqueeze(-1)).squeeze(-1)
        return a, b, o


class E2C(LatentModule):
    """Embed to Control (config.model="e2c") or the VAE baseline (config.model="vae"); one API for both.

    encode(x) -> Normal                  Q_phi(z | x), batch shape (B, Z)
    decode(z) -> image                   (B, C, H, W) in [0, 1] (logits=True: the decoder's raw logits)
    transition(z, u) -> distribution     predicted z_{t+1}; `.mean` (B, Z) is cheap
    linearize(z, u=None) -> (A, B, o)    (B, Z, Z), (B, Z, U), (B, Z): mean of z_{t+1} ~ A z + B u + o
    loss(x_t, u_t, x_next) -> dict       named scalar terms and the total under "loss"
    """

    def __init__(self, config: E2CConfig):
        super().__init__()
        if not isinstance(config, E2CConfig):
            raise ForesightError(f"E2C(config): expected an E2CConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.dynamics = LocallyLinearTransition(config) if config.model == "e2c" else FreeFormTransition(config)

    # -- the model's parts --

    def encode(self, x: torch.Tensor) -> Normal:
        """Q_phi(z | x) = N(mu, diag sigma^2) for images x (B, C, H, W) in [0, 1]."""
        mu, logvar = self.encoder(self._check_images("x", x))
        return Normal(mu, torch.exp(0.5 * logvar), validate_args=False)

    def decode(self, z: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
        """Image (B, C, H, W) in [0, 1] for latents z (B, Z): the Bernoulli probabilities / Gaussian means."""
        out = self.decoder(self._check_latent("z", z))
        return out if logits else torch.sigmoid(out)

    def linearize(self, z: torch.Tensor, u: torch.Tensor | None = None):
        """Local linear model of the transition mean at (z, u): returns A (B, Z, Z), B (B, Z, U), o (B, Z).

        E2C: the network's own A_t = I + v_t r_t^T, B_t, o_t at z (u is not needed: the model is linear in u),
        exactly as the paper's iLQR uses them. VAE: autograd Jacobians of the mean at (z, u) (u defaults to 0),
        with o chosen so that A z + B u + o equals the mean there.
        """
        if self.config.model != "e2c":
            return self._linearize_by_autograd(lambda z1, u1: self.dynamics(z1, u1)[0], z, u)
        z = self._check_latent("z", z)
        v, r, b, o = self.dynamics(z)
        a = torch.eye(z.shape[1], dtype=z.dtype, device=z.device) + v.unsqueeze(-1) * r.unsqueeze(-2)
        return a, b, o

    def transition(self, z, u: torch.Tensor, *, at: torch.Tensor | None = None):
        """The predicted next latent given z (B, Z) -- a point -- or an encoder Normal, and actions u (B, U).

        E2C returns a LocallyLinearNormal N(A mu + B u + o, A Sigma A^T) with (A, B, o) from the network at `at`
        (default: the mean); a point z has Sigma = 0. The loss passes at = a sample z_t, as the paper.
        VAE returns a diagonal Normal from the MLP at `at` (default: the mean); the input's variance is unused.
        `.mean` of either is (B, Z) and cheap, for planning with batches of hundreds.
        """
        if isinstance(z, Normal):
            mean, var = z.mean, z.variance
            self._check_latent("z.mean", mean)
        else:
            mean = self._check_latent("z", z)
            var = torch.zeros_like(mean)
        batch = mean.shape[0]
        u = self._check_action("u", u, batch)
        point = mean if at is None else self._check_latent("at", at, batch)
        if self.config.model == "e2c":
            v, r, b, o = self.dynamics(point)
            a_mean = mean + v * (r * mean).sum(-1, keepdim=True)  # A mu without forming A
            return LocallyLinearNormal(a_mean + (b @ u.unsqueeze(-1)).squeeze(-1) + o, var, v, r)
        next_mean, logvar = self.dynamics(point, u)
        return Normal(next_mean, torch.exp(0.5 * logvar), validate_args=False)

    def nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log P_theta(x | z) per image, summed over pixels: (B,)."""
        if self.config.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            s = self.config.pixel_std
            per_pixel = 0.5 * ((x - torch.sigmoid(logits)) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(-1)

    def loss(self, x_t: torch.Tensor, u_t: torch.Tensor, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
        """The E2C objective on a batch of transitions; returns scalars recon, recon_next, kl_prior,
        kl_transition and their weighted sum "loss" (all differentiable). Images (B, C, H, W) in [0, 1]."""
        x_t, u_t, x_next = self._check_triples(x_t, u_t, x_next)

        q_t = self.encode(x_t)  # Q_phi(z_t | x_t)
        q_next = self.encode(x_next)  # Q_phi(z_{t+1} | x_{t+1})
        z_t = q_t.rsample()  # (B, Z)
        pred = self.transition(q_t, u_t, at=z_t)  # Q_psi(z^_{t+1} | z_t, u_t)
        z_next = pred.rsample()  # (B, Z)

        logits = self.decoder(torch.cat([z_t, z_next]))  # one decoder pass for both, (2B, C, H, W)
        b = x_t.shape[0]
        recon = self.nll(logits[:b], x_t).mean()
        recon_next = self.nll(logits[b:], x_next).mean()
        var_t = q_t.variance
        kl_prior = (0.5 * (var_t + q_t.mean**2 - 1 - torch.log(var_t)).sum(-1)).mean()
        if isinstance(pred, LocallyLinearNormal):
            kl_transition = pred.kl(q_next).mean()
        else:
            kl_transition = kl_divergence(pred, q_next).sum(-1).mean()
        total = recon + recon_next + self.config.beta * kl_prior + self.config.lam * kl_transition
        return {"loss": total, "recon": recon, "recon_next": recon_next, "kl_prior": kl_prior,
                "kl_transition": kl_transition}
