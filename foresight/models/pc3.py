"""Predictive Coding for Locally-Linear Control (PC3): a latent space learned without a decoder.

Shu, Nguyen, Chow, Pham, Than, Ghavamzadeh, Ermon & Bui, "Predictive Coding for Locally-Linear Control", ICML
2020 (arXiv:2003.01086). The paper's names are kept:

    encoder     E(x) = z                            deterministic (a point, no decoder anywhere)
    transition  F(z' | z, u) = N(z + f(z, u), diag s^2)   as PCC's (``models.pcc``); iLQR linearises its mean

Loss of a batch of B transitions (x_i, u_i, x'_i), z_i = E(x_i), z'_i = E(x'_i) + sigma_E eps (eps ~ N(0, I): the
"latent noise" that keeps the map from collapsing to a point once the CPC bound saturates):

    s_ij         = log F(z'_i | z_j, u_j)                       every pair in the batch, (B, B)
    predictive   L_cpc = -1/B sum_i [ s_ii - log( 1/B sum_j exp s_ij ) ]    the CPC bound on I(z'; z, u), the
                                                                 other transitions of the batch as negatives
    consistency  L_c   = -1/B sum_i s_ii                           the transition explains the next encoding
    curvature    L_cur as PCC's (``models.pcc.curvature``), at the encodings z_i
    centring     L_0   = || 1/B sum_i z_i ||^2                     the authors' code keeps the map near the origin
    loss         lam_nce L_cpc + lam_c L_c + lam_cur L_cur + norm_coeff L_0

``encode`` returns N(E(x), sigma_E^2 I), the encoding the loss sees, so the latent planners read its mean as for
E2C and PCC. The defaults are the authors' README settings (VinAIResearch/PC3-pytorch). Images are float
(B, C, H, W) in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Normal

from foresight.errors import ForesightError
from foresight.models.e2c import Encoder, FreeFormTransition, LatentConfig
from foresight.models.pcc import FreeFormLatent, curvature
from foresight.recipes import spec


@dataclass(frozen=True)
class PC3Config(LatentConfig):
    """Architecture and loss weights of a PC3 model (the paper's planar sizes by default). Checked where it is
    read (``foresight.recipes.from_dict``)."""

    model: str = spec("pc3", choices=("pc3",), help="always 'pc3'")
    encoder_widths: tuple[int, ...] = spec((300, 300), min=1, help="hidden layers of E")
    transition_widths: tuple[int, ...] = spec((20, 20), min=1, help="hidden layers of F")
    lam_nce: float = spec(1.0, min=0.0, help="weight of the CPC bound L_cpc")
    lam_c: float = spec(1.0, min=0.0, help="weight of the consistency term L_c")
    lam_cur: float = spec(7.0, min=0.0, help="weight of the curvature term L_cur")
    delta: float = spec(0.1, above=0.0, help="std of the curvature term's perturbations")
    latent_noise: float = spec(0.1, min=0.0, help="sigma_E, the std of the noise added to the next encoding")
    norm_coeff: float = spec(0.1, min=0.0, help="weight of the centring term L_0")


PRESETS = {  # the paper's sizes
    "planar": dict(image_shape=(1, 40, 40), latent_dim=2, action_dim=2, encoder="mlp", encoder_widths=(300, 300),
                   transition_widths=(20, 20)),
    "pendulum": dict(image_shape=(2, 48, 48), latent_dim=3, action_dim=1, encoder="mlp", encoder_widths=(500, 500),
                     transition_widths=(30, 30)),
    # PCC / PC3's cart-pole: two stacked 80x80 grey frames, z of 8; the papers' conv encoder (32-32-10 channels down to
    # 10x10, then 200 units) with 4x4 stride-2 kernels in place of their 5x5 ones and without their first stride-1 layer
    "cartpole": dict(image_shape=(2, 80, 80), latent_dim=8, action_dim=1, encoder="conv", conv_channels=(32, 32, 10),
                     encoder_widths=(200,), transition_widths=(40, 40)),
}


def cpc_scores(f: Normal, z_next: torch.Tensor) -> torch.Tensor:
    """s_ij = log F_j(z'_i): the log density of every next encoding under every transition of the batch, (B, B)."""
    return Normal(f.mean[None], f.stddev[None], validate_args=False).log_prob(z_next[:, None]).sum(-1)


def cpc_bound(scores: torch.Tensor) -> torch.Tensor:
    """L_cpc = -mean_i [ s_ii - log mean_j exp s_ij ] from the (B, B) scores."""
    b = scores.shape[0]
    return -(scores.diagonal() - torch.logsumexp(scores, dim=1) + math.log(b)).mean()


class PC3(FreeFormLatent):
    """PC3 with the latent planners' API (as E2C's, without ``decode``):

    encode(x) -> Normal                  N(E(x), sigma_E^2), batch shape (B, Z)
    transition(z, u) -> Normal           F(z' | z, u); z a point (B, Z) or an encoder Normal (its mean is used)
    linearize(z, u=None) -> (A, B, o)    autograd Jacobians of F's mean
    loss(x_t, u_t, x_next) -> dict       named scalar terms and the total under "loss"
    """

    def __init__(self, config: PC3Config):
        super().__init__()
        if not isinstance(config, PC3Config):
            raise ForesightError(f"PC3(config): expected a PC3Config, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config, gaussian=False)
        self.dynamics = FreeFormTransition(config)

    def encode(self, x: torch.Tensor) -> Normal:
        z = self.encoder(self._check_images("x", x))
        return Normal(z, torch.full_like(z, self.config.latent_noise), validate_args=False)

    def loss(self, x_t: torch.Tensor, u_t: torch.Tensor, x_next: torch.Tensor) -> dict[str, torch.Tensor]:
        x_t, u_t, x_next = self._check_triples(x_t, u_t, x_next)
        c = self.config
        z = self.encoder(x_t)  # (B, Z)
        z_next = self.encoder(x_next)
        z_next = z_next + c.latent_noise * torch.randn_like(z_next)
        scores = cpc_scores(self.transition(z, u_t), z_next)  # (B, B)
        nce = cpc_bound(scores)
        consistency = -scores.diagonal().mean()
        cur = curvature(self.mean_next, z, u_t, c.delta)
        centre = z.mean(0).pow(2).sum()
        total = c.lam_nce * nce + c.lam_c * consistency + c.lam_cur * cur + c.norm_coeff * centre
        return {"loss": total, "nce": nce, "consistency": consistency, "curvature": cur, "centre": centre}
