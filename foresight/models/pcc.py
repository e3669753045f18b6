"""Prediction, Consistency, Curvature (PCC): a latent space learned for locally linear control.

Levine, Chow, Shu, Li, Ghavamzadeh & Bui, "Prediction, Consistency, Curvature: Representation Learning for
Locally-Linear Control", ICLR 2020 (arXiv:1909.01506). The paper's names are kept:

    encoder     E(z | x)                     = N(mu, diag sigma^2)   (the paper's P(z_t | x_t) and Q(z^_{t+1} | x_{t+1}))
    decoder     D(x | z)                     Bernoulli, per pixel (logits)
    transition  F(z' | z, u)                 = N(z + f(z, u), diag s^2)        an MLP on (z, u) with a skip connection;
                                             iLQR linearises its mean by autograd
    backward    Q(z_t | z^_{t+1}, u_t, x_t)  = N(...)                the variational posterior of the prediction bound

Loss of one transition (x_t, u_t, x_{t+1}); pixels and latent dimensions are summed, the batch averaged:

    z^_{t+1} ~ E(. | x_{t+1}),   z_t ~ Q(. | z^_{t+1}, u_t, x_t)
    consistency  L_c   = KL(Q || E(. | x_t)) - H(E(. | x_{t+1})) - log F(z^_{t+1} | z_t, u_t)
    prediction   L_p   = -log D(x_{t+1} | z^_{t+1}) + L_c               (a bound on -log P(x_{t+1} | x_t, u_t))
    curvature    L_cur = E_eta || f(z + eta_z, u + eta_u) - f(z, u) - J_z eta_z - J_u eta_u ||^2,  eta ~ N(0, delta^2 I)
    loss         lam_p L_p + lam_c L_c + lam_cur L_cur + vae_coeff L_vae + determ_coeff L_determ

and the two terms the authors' code adds (VinAIResearch/PCC-pytorch, ``train_pcc.py``):

    L_vae     = -log D(x_t | z ~ E(. | x_t)) + KL(E(. | x_t) || N(0, I))      keeps the encoder of x_t an autoencoder
    L_determ  = -log D(x_{t+1} | mean F(mean E(x_t), u_t))                   the prediction a planner makes: means

The curvature term is taken at z ~ E(. | x_t), detached as the authors' code does: it shapes the transition, and
the encoder only through the transition's fit. J_z eta_z + J_u eta_u is one forward-mode product (no Jacobian is
formed). Images are float (B, C, H, W) in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from foresight.errors import ForesightError
from foresight.models.e2c import (LOGVAR_RANGE, Decoder, Encoder, FreeFormTransition, LatentConfig, LatentModule,
                                  image_features)
from foresight.recipes import spec


@dataclass(frozen=True)
class PCCConfig(LatentConfig):
    """Architecture and loss weights of a PCC model (the paper's planar sizes by default). Checked where it is
    read (``foresight.recipes.from_dict``)."""

    model: str = spec("pcc", choices=("pcc",), help="always 'pcc'")
    encoder_widths: tuple[int, ...] = spec((300, 300), min=1, help="hidden layers of E")
    transition_widths: tuple[int, ...] = spec((20, 20), min=1, help="hidden layers of F")
    decoder_widths: tuple[int, ...] = spec((300, 300), min=1, help="hidden layers of D")
    backward_widths: tuple[int, int, int] = spec((100, 5, 100), min=1, help="Q: the image's embedding, the "
                                                 "embedding of z^_{t+1} and of u_t each, the joint hidden layer")
    lam_p: float = spec(1.0, min=0.0, help="weight of the prediction bound L_p")
    lam_c: float = spec(8.0, min=0.0, help="weight of the consistency term L_c")
    lam_cur: float = spec(8.0, min=0.0, help="weight of the curvature term L_cur")
    delta: float = spec(0.1, above=0.0, help="std of the curvature term's perturbations eta")
    vae_coeff: float = spec(0.01, min=0.0, help="weight of the autoencoder term on x_t (authors' code)")
    determ_coeff: float = spec(0.3, min=0.0, help="weight of the mean-prediction term (authors' code)")


PRESETS = {  # the papers' sizes (PCC and PC3 share encoder and transition widths)
    "planar": dict(image_shape=(1, 40, 40), latent_dim=2, action_dim=2, encoder="mlp", encoder_widths=(300, 300),
                   decoder_widths=(300, 300), transition_widths=(20, 20), backward_widths=(100, 5, 100)),
    "pendulum": dict(image_shape=(2, 48, 48), latent_dim=3, action_dim=1, encoder="mlp", encoder_widths=(500, 500),
                     decoder_widths=(500, 500), transition_widths=(30, 30), backward_widths=(200, 10, 200)),
    # PCC / PC3's cart-pole: two stacked 80x80 grey frames, z of 8; the papers' conv encoder (32-32-10 channels down to
    # 10x10, then 200 units) with 4x4 stride-2 kernels in place of their 5x5 ones and without their first stride-1 layer
    "cartpole": dict(image_shape=(2, 80, 80), latent_dim=8, action_dim=1, encoder="conv", conv_channels=(32, 32, 10),
                     encoder_widths=(200,), decoder_widths=(200,), transition_widths=(40, 40), backward_widths=(200, 10, 200)),
}


def curvature(mean, z: torch.Tensor, u: torch.Tensor, delta: float) -> torch.Tensor:
    """PCC's curvature term: E || mean(z + eta_z, u + eta_u) - mean(z, u) - J_z eta_z - J_u eta_u ||^2 with
    eta ~ N(0, delta^2 I), one draw per row; z (B, Z) and u (B, U) are detached. Zero for an affine ``mean``."""
    z, u = z.detach(), u.detach()
    eta_z, eta_u = delta * torch.randn_like(z), delta * torch.randn_like(u)
    f, directional = torch.func.jvp(mean, (z, u), (eta_z, eta_u))  # f(z, u), J_z eta_z + J_u eta_u
    taylor_error = mean(z + eta_z, u + eta_u) - f - directional
    return taylor_error.pow(2).sum(-1).mean()


class BackwardEncoder(nn.Module):
    """Q(z_t | z^_{t+1}, u_t, x_t): each input embedded by one linear layer, joined by a hidden layer (the
    authors' shape) -> (mu, logvar), each (B, Z)."""

    def __init__(self, cfg: PCCConfig):
        super().__init__()
        w_x, w_zu, w_joint = cfg.backward_widths
        features, n_in = image_features(cfg)
        self.x = nn.Sequential(features, nn.Linear(n_in, w_x))
        self.z = nn.Linear(cfg.latent_dim, w_zu)
        self.u = nn.Linear(cfg.action_dim, w_zu)
        self.joint = nn.Sequential(nn.Linear(w_x + 2 * w_zu, w_joint), nn.ReLU(), nn.Linear(w_joint, 2 * cfg.latent_dim))

    def forward(self, z_next, u, x):
        h = torch.cat([self.x(x), self.z(z_next), self.u(u)], dim=-1)
        mu, logvar = self.joint(h).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


def normal(mu, logvar) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar), validate_args=False)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log D(x | z) per image, summed over pixels: (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


class FreeFormLatent(LatentModule):
    """PCC's and PC3's transition F(z' | z, u) (``self.dynamics``, a ``FreeFormTransition``) as the planners use it."""

    def transition(self, z, u: torch.Tensor) -> Normal:
        z = self._check_latent("z", z.mean if isinstance(z, Normal) else z)
        return normal(*self.dynamics(z, self._check_action("u", u, z.shape[0])))

    def linearize(self, z: torch.Tensor, u: torch.Tensor | None = None):
        return self._linearize_by_autograd(self.mean_next, z, u)

    def mean_next(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The mean of F(z' | z, u), (B, Z): what planning rolls out."""
        return self.dynamics(z, u)[0]


class PCC(FreeFormLatent):
    """PCC with the latent planners' API (as E2C's):

    encode(x) -> Normal                  E(z | x), batch shape (B, Z)
    decode(z) -> image                   (B, C, H, W) in [0, 1]
    transition(z, u) -> Normal           F(z' | z, u); z a point (B, Z) or an encoder Normal (its mean is used)
    linearize(z, u=None) -> (A, B, o)    autograd Jacobians of F's mean
    loss(x_t, u_t, x_next) -> dict       named scalar terms and the total under "loss"
    """

    def __init__(self, config: PCCConfig):
        super().__init__()
        if not isinstance(config, PCCConfig):
            raise ForesightError(f"PCC(config): expected a PCCConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.dynamics = FreeFormTransition(config)
        self.backward_encoder = BackwardEncoder(config)

    def encode(self, x: torch.Tensor) -> Normal:
        return normal(*self.encoder(self._check_images("x", x)))

    def decode(self, z: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
        out = self.decoder(self._check_latent("z", z))
        return out if logits else torch.sigmoid(out)

    def loss(self, x_t: torch.Tensor, u_t: torch.Tensor, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
        x_t, u_t, x_next = self._check_triples(x_t, u_t, x_next)
        c = self.config
        b = x_t.shape[0]
        e_t, e_next = self.encode(x_t), self.encode(x_next)  # E(z_t | x_t), E(z^_{t+1} | x_{t+1})
        z_next = e_next.rsample()  # (B, Z)
        q_back = normal(*self.backward_encoder(z_next, u_t, x_t))  # Q(z_t | z^_{t+1}, u_t, x_t)
        z_t = q_back.rsample()  # (B, Z)
        f = self.transition(z_t, u_t)  # F(z' | z_t, u_t)

        kl_back = kl_divergence(q_back, e_t).sum(-1).mean()
        entropy_next = e_next.entropy().sum(-1).mean()
        log_f = f.log_prob(z_next).sum(-1).mean()
        consistency = kl_back - entropy_next - log_f

        z_vae = e_t.rsample()
        mean_next = self.mean_next(e_t.mean, u_t)  # the means a planner rolls out
        logits = self.decoder(torch.cat([z_next, z_vae, mean_next]))  # one decoder pass, (3B, C, H, W)
        recon_next = bernoulli_nll(logits[:b], x_next).mean()
        prediction = recon_next + consistency
        kl_prior = (0.5 * (e_t.variance + e_t.mean**2 - 1 - torch.log(e_t.variance)).sum(-1)).mean()
        vae = bernoulli_nll(logits[b:2 * b], x_t).mean() + kl_prior
        determ = bernoulli_nll(logits[2 * b:], x_next).mean()
        cur = curvature(self.mean_next, e_t.rsample(), u_t, c.delta)

        total = c.lam_p * prediction + c.lam_c * consistency + c.lam_cur * cur + c.vae_coeff * vae \
            + c.determ_coeff * determ
        return {"loss": total, "prediction": prediction, "consistency": consistency, "curvature": cur,
                "vae": vae, "determ": determ}
