"""E2C and its VAE baseline: closed-form KL, the A = I + v r^T structure, shapes, learning, input errors."""
import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from foresight import recipes
from foresight.errors import ForesightError
from foresight.models.e2c import (
    E2C,
    PRESETS,
    E2CConfig,
    LocallyLinearNormal,
    kl_locally_linear_to_diagonal,
)


def preset(name, **overrides) -> E2CConfig:
    """A preset's config as a recipe reads it: the preset's fields, the table's keys over them, checked."""
    return recipes.from_dict(E2CConfig, {**PRESETS[name], **overrides}, "e2c.toml", prefix="model.")


def planar(**overrides):
    return preset("planar", **overrides)


def point_push(**overrides):
    return preset("point_push", **overrides)


def tiny(model="e2c", **overrides):
    cfg = dict(image_shape=(1, 16, 16), latent_dim=2, action_dim=2, model=model, encoder_widths=(64, 64),
               decoder_widths=(64, 64), transition_widths=(32,))
    return E2CConfig(**{**cfg, **overrides})


# ---------------------------------------------------------------------------------- closed-form KL


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_closed_form_kl_matches_torch_multivariate_normal(k):
    g = torch.Generator().manual_seed(k)
    n = 64
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mean0, mean1 = rand(n, k), rand(n, k)
    var0 = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 + 0.05
    var1 = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 + 0.05
    v, r = rand(n, k), rand(n, k)
    v[:8] = -1.7 * r[:8] / (r[:8] ** 2).sum(-1, keepdim=True)  # 1 + r.v = -0.7 < 0: det A negative, still valid
    a = torch.eye(k, dtype=torch.float64) + v.unsqueeze(-1) * r.unsqueeze(-2)
    cov0 = a @ torch.diag_embed(var0) @ a.transpose(-1, -2)
    expected = kl_divergence(MultivariateNormal(mean0, cov0), MultivariateNormal(mean1, torch.diag_embed(var1)))
    got = kl_locally_linear_to_diagonal(mean0, var0, v, r, mean1, var1)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-8)
    # the same through the distribution object, and the opposite direction is a different number
    dist = LocallyLinearNormal(mean0, var0, v, r)
    torch.testing.assert_close(dist.kl(Normal(mean1, var1.sqrt())), expected, rtol=1e-7, atol=1e-8)
    reverse = kl_divergence(MultivariateNormal(mean1, torch.diag_embed(var1)), MultivariateNormal(mean0, cov0))
    assert not torch.allclose(reverse, expected)


def test_locally_linear_normal_moments_and_samples():
    g = torch.Generator().manual_seed(0)
    k = 3
    mean = torch.randn(2, k, generator=g, dtype=torch.float64)
    var0 = torch.rand(2, k, generator=g, dtype=torch.float64) + 0.2
    v, r = torch.randn(2, k, generator=g, dtype=torch.float64), torch.randn(2, k, generator=g, dtype=torch.float64)
    dist = LocallyLinearNormal(mean, var0, v, r)
    cov = dist.covariance_matrix
    torch.testing.assert_close(dist.variance, torch.diagonal(cov, dim1=-2, dim2=-1))
    torch.testing.assert_close(dist.to_multivariate_normal().covariance_matrix, cov)
    torch.manual_seed(0)
    x = dist.rsample((40000,))  # (N, 2, k)
    assert x.shape == (40000, 2, k)
    torch.testing.assert_close(x.mean(0), mean, atol=0.05 * cov.diagonal(dim1=-2, dim2=-1).sqrt().max().item(), rtol=0)
    centred = x - x.mean(0)
    emp = torch.einsum("nbi,nbj->bij", centred, centred) / (x.shape[0] - 1)
    torch.testing.assert_close(emp, cov, atol=0.05 * cov.abs().max().item(), rtol=0)


# ---------------------------------------------------------------------------------- shapes and structure


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("model", ["e2c", "vae"])
def test_shapes_of_encode_transition_decode_for_presets(preset, model):
    torch.manual_seed(0)
    cfg = E2CConfig(**{**PRESETS[preset], "model": model})
    net = E2C(cfg)
    (c, h, w), zd, ud, b = cfg.image_shape, cfg.latent_dim, cfg.action_dim, 3
    x = torch.rand(b, c, h, w)
    u = torch.randn(b, ud)
    q = net.encode(x)
    assert isinstance(q, Normal) and q.mean.shape == (b, zd) and q.stddev.shape == (b, zd)
    pred = net.transition(q, u)
    assert pred.mean.shape == (b, zd) and pred.variance.shape == (b, zd)
    assert pred.rsample().shape == (b, zd)
    assert net.transition(q.mean, u).mean.shape == (b, zd)  # a point works too
    img = net.decode(pred.rsample())
    assert img.shape == (b, c, h, w) and img.min() >= 0 and img.max() <= 1
    a, bm, o = net.linearize(q.mean, u)
    assert a.shape == (b, zd, zd) and bm.shape == (b, zd, ud) and o.shape == (b, zd)
    terms = net.loss(x, u, torch.rand(b, c, h, w))
    assert set(terms) == {"loss", "recon", "recon_next", "kl_prior", "kl_transition"}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())


def test_paper_widths_in_presets():
    net = E2C(planar())
    linears = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1600, 150), (150, 150), (150, 150), (150, 4)]
    dec = [m.out_features for m in net.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert dec == [200, 200, 1600]
    assert preset("pendulum").image_shape == (2, 48, 48) and preset("pendulum").latent_dim == 3
    assert preset("pendulum").action_dim == 1 and planar().action_dim == 2 and point_push().latent_dim == 8
    assert point_push(latent_dim=16).latent_dim == 16


@pytest.mark.parametrize("cfg", [planar(), point_push()], ids=["planar", "point_push"])
def test_a_is_identity_plus_rank_one_and_mean_is_linear(cfg):
    torch.manual_seed(1)
    net = E2C(cfg)
    with torch.no_grad():  # move away from the near-identity initialisation
        net.dynamics.head.weight.mul_(20)
        net.dynamics.head.bias.normal_()
    z, u = torch.randn(16, cfg.latent_dim), torch.randn(16, cfg.action_dim)
    a, b, o = net.linearize(z)
    s = torch.linalg.svdvals(a - torch.eye(cfg.latent_dim))  # (16, Z) descending
    assert (s[:, 0] > 1e-2).all()
    assert (s[:, 1:] <= 1e-5 * s[:, :1]).all()  # rank exactly one
    pred = net.transition(z, u)
    torch.testing.assert_close(pred.mean, (a @ z[..., None] + b @ u[..., None]).squeeze(-1) + o)
    # with an encoder distribution, the mean uses A(at) applied to mu and the covariance is A Sigma A^T
    q = Normal(z, torch.rand(16, cfg.latent_dim) + 0.1)
    at = z + 0.3 * torch.randn_like(z)
    pred = net.transition(q, u, at=at)
    a2, b2, o2 = net.linearize(at)
    torch.testing.assert_close(pred.mean, (a2 @ z[..., None] + b2 @ u[..., None]).squeeze(-1) + o2)
    torch.testing.assert_close(pred.covariance_matrix, a2 @ torch.diag_embed(q.variance) @ a2.transpose(1, 2))


def test_vae_linearize_is_the_jacobian_of_the_mean():
    torch.manual_seed(2)
    net = E2C(tiny("vae")).double()
    z, u = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    a, b, o = net.linearize(z, u)
    mean = net.transition(z, u).mean
    torch.testing.assert_close((a @ z[..., None] + b @ u[..., None]).squeeze(-1) + o, mean)
    eps = 1e-6
    for i in range(2):
        dz = torch.zeros_like(z)
        dz[:, i] = eps
        fd = (net.transition(z + dz, u).mean - net.transition(z - dz, u).mean) / (2 * eps)
        torch.testing.assert_close(a[:, :, i], fd, rtol=1e-5, atol=1e-7)
        fd = (net.transition(z, u + dz).mean - net.transition(z, u - dz).mean) / (2 * eps)
        torch.testing.assert_close(b[:, :, i], fd, rtol=1e-5, atol=1e-7)


def test_loss_is_the_weighted_sum_and_reaches_every_parameter():
    torch.manual_seed(3)
    net = E2C(tiny(beta=0.5, lam=2.0))
    x, xn, u = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    t = net.loss(x, u, xn)
    torch.testing.assert_close(t["loss"], t["recon"] + t["recon_next"] + 0.5 * t["kl_prior"] + 2.0 * t["kl_transition"])
    t["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_gaussian_likelihood_is_the_gaussian_nll():
    net = E2C(tiny(likelihood="gaussian", pixel_std=0.2))
    logits, x = torch.randn(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    expected = -Normal(torch.sigmoid(logits), 0.2).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(net.nll(logits, x), expected)


# ---------------------------------------------------------------------------------- learning


def moving_square_pairs(n: int, size: int = 16, side: int = 4, seed: int = 0):
    """(x_t, u_t, x_{t+1}): a white square at a random place, moved by an integer action in [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    top = size - side
    pos = rng.integers(0, top + 1, size=(n, 2))
    act = rng.integers(-2, 3, size=(n, 2))
    nxt = np.clip(pos + act, 0, top)

    def draw(p):
        img = np.zeros((n, 1, size, size), np.float32)
        for i, (row, col) in enumerate(p):
            img[i, 0, row:row + side, col:col + side] = 1.0
        return torch.from_numpy(img)

    return draw(pos), torch.from_numpy(act.astype(np.float32)), draw(nxt)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest, and avoids oversubscription when the machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("model", ["e2c", "vae"])
def test_tiny_model_loss_falls_with_adam(model, one_thread):
    torch.manual_seed(0)
    x, u, xn = moving_square_pairs(256)
    net = E2C(tiny(model))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def evaluate():
        torch.manual_seed(123)
        with torch.no_grad():
            return {k: float(v) for k, v in net.loss(x, u, xn).items()}

    before = evaluate()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, 256, (64,), generator=g)
        opt.zero_grad()
        net.loss(x[idx], u[idx], xn[idx])["loss"].backward()
        opt.step()
    after = evaluate()
    assert np.isfinite(list(after.values())).all()
    assert after["loss"] < 0.6 * before["loss"]
    assert after["recon_next"] < 0.6 * before["recon_next"]
    # the prediction uses the action: decoding the predicted mean fits x_{t+1} better with the true actions
    with torch.no_grad():
        q = net.encode(x)
        fit = lambda actions: net.nll(net.decode(net.transition(q, actions).mean, logits=True), xn).mean()  # noqa: E731
        assert fit(u) < 0.97 * fit(u[torch.randperm(256, generator=g)])


# ---------------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_argument_and_shape():
    net = E2C(tiny())
    x, u = torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    with pytest.raises(ForesightError, match=r"x_t.*\(B, 1, 16, 16\).*\(4, 1, 16, 17\)"):
        net.loss(torch.rand(4, 1, 16, 17), u, x)
    with pytest.raises(ForesightError, match=r"x_next.*\(1, 16, 16\)"):
        net.loss(x, u, torch.rand(1, 16, 16))
    with pytest.raises(ForesightError, match=r"x_t.*uint8"):
        net.loss((x * 255).to(torch.uint8), u, x)
    with pytest.raises(ForesightError, match=r"x_next.*\[0, 1\]"):
        net.loss(x, u, x * 255)
    with pytest.raises(ForesightError, match=r"u_t.*\(4, 2\).*\(4, 3\)"):
        net.loss(x, torch.randn(4, 3), x)
    with pytest.raises(ForesightError, match=r"u_t.*\(4, 2\).*\(3, 2\)"):
        net.loss(x, torch.randn(3, 2), x)
    with pytest.raises(ForesightError, match=r"x_next.*batch of 3"):
        net.loss(x, u, x[:3])
    with pytest.raises(ForesightError, match=r"x:.*\(B, 1, 16, 16\)"):
        net.encode(torch.rand(4, 3, 16, 16))
    with pytest.raises(ForesightError, match=r"z:.*\(B, 2\).*\(4, 3\)"):
        net.decode(torch.randn(4, 3))
    with pytest.raises(ForesightError, match=r"u:.*\(4, 2\)"):
        net.transition(torch.randn(4, 2), torch.randn(4))
    with pytest.raises(ForesightError, match=r"at:.*\(4, 2\)"):
        net.transition(torch.randn(4, 2), u, at=torch.randn(5, 2))
    with pytest.raises(ForesightError, match="E2CConfig"):
        E2C({"latent_dim": 2})


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(action_dim=True), "action_dim"),
        (dict(image_shape=(40, 40)), "image_shape"),
        (dict(model="ae"), "model"),
        (dict(encoder="cnn"), "encoder"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(lam=-1.0), "lam"),
        (dict(beta=float("nan")), "beta"),
        (dict(pixel_std=0), "pixel_std"),
        (dict(encoder_widths=(150, 0)), "encoder_widths"),
        (dict(encoder="conv"), "image_shape"),  # 40x40 is not a multiple of 2**4
        (dict(encoder="conv", conv_channels=()), "conv_channels"),
        (dict(transition_width=(10,)), "transition_width"),  # misspelt: unknown field
    ],
)
def test_bad_config_names_the_field(overrides, field):
    """A config is checked where it is read (recipes.from_dict), and the mistake names its key."""
    with pytest.raises(ForesightError, match=rf"e2c.toml: (unknown )?key 'model.{field}"):
        planar(**overrides)


def test_config_accepts_lists_and_is_hashable():
    cfg = planar(encoder_widths=[10, 10], image_shape=[1, 40, 40])
    assert cfg.encoder_widths == (10, 10) and cfg.image_shape == (1, 40, 40)
    assert hash(cfg) == hash(planar(encoder_widths=(10, 10)))
