"""PCC and PC3: each loss term against a direct computation on a tiny case (curvature zero for an affine
transition, the CPC bound by brute force, every term of both losses from the networks' outputs by hand), tiny
models' losses falling on planar data, training and planning through the same commands as E2C, and clear
errors for bad recipes."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foresight import collect, recipes, training
from foresight.envs import planar
from foresight.errors import ForesightError
from foresight.learners import load_run
from foresight.models.pc3 import PC3, PC3Config, cpc_bound, cpc_scores
from foresight.models.pcc import PCC, PCCConfig, curvature
from foresight.planning import mpc, suites
from foresight.planning.latent import LatentModel

TINY = dict(image_shape=(1, 40, 40), latent_dim=2, action_dim=2, encoder_widths=(32,), transition_widths=(16,))


def planar_batch(n=16, seed=0):
    """(x_t, u_t, x_{t+1}) of the planar system: random free positions, random moves, the true renderer."""
    rng = np.random.default_rng(seed)
    x, u, x_next = [], [], []
    while len(x) < n:
        p = rng.uniform(planar.AGENT_HALF, planar.SIZE - planar.AGENT_HALF, 2)
        a = rng.uniform(-1, 1, 2)
        q = p + a
        if planar.collides(p[None])[0] or planar.collides(q[None])[0] or not (planar.AGENT_HALF <= q).all() \
                or not (q <= planar.SIZE - planar.AGENT_HALF).all():
            continue
        x.append(planar.render_state(p))
        u.append(a)
        x_next.append(planar.render_state(q))
    img = lambda v: torch.as_tensor(np.stack(v), dtype=torch.float32).permute(0, 3, 1, 2) / 255  # noqa: E731
    return img(x), torch.as_tensor(np.stack(u), dtype=torch.float32), img(x_next)


def test_curvature_is_zero_for_an_affine_transition():
    a, b, o = torch.randn(3, 3), torch.randn(3, 2), torch.randn(3)
    z, u = torch.randn(64, 3), torch.randn(64, 2)
    assert curvature(lambda z, u: z @ a.T + u @ b.T + o, z, u, delta=0.5) < 1e-10


def test_curvature_equals_the_taylor_error_with_explicit_jacobians():
    w = torch.randn(2, 4)
    mean = lambda z, u: torch.tanh(torch.cat([z, u], -1) @ w.T) + z  # noqa: E731
    z, u = torch.randn(5, 2), torch.randn(5, 2)
    torch.manual_seed(3)
    got = curvature(mean, z, u, delta=0.3)
    torch.manual_seed(3)
    eta_z, eta_u = 0.3 * torch.randn_like(z), 0.3 * torch.randn_like(u)  # the same draws, in the same order
    errors = []
    for i in range(5):
        jz, ju = torch.autograd.functional.jacobian(lambda a, b: mean(a[None], b[None])[0], (z[i], u[i]))
        taylor = mean(z[i:i + 1] + eta_z[i], u[i:i + 1] + eta_u[i])[0] - mean(z[i:i + 1], u[i:i + 1])[0] \
            - jz @ eta_z[i] - ju @ eta_u[i]
        errors.append(float((taylor ** 2).sum()))
    assert float(got) == pytest.approx(np.mean(errors), rel=1e-4)
    assert float(got) > 1e-4  # a curved transition has a curvature cost


def test_the_cpc_bound_matches_a_brute_force_computation():
    torch.manual_seed(0)
    mean, std, z_next = torch.randn(4, 3), torch.rand(4, 3) + 0.2, torch.randn(4, 3)
    scores = cpc_scores(torch.distributions.Normal(mean, std), z_next)
    brute = torch.zeros(4, 4)
    for i in range(4):
        for j in range(4):  # log N(z'_i; mean_j, std_j), dimension by dimension
            brute[i, j] = sum(-0.5 * ((z_next[i, d] - mean[j, d]) / std[j, d]) ** 2 - math.log(std[j, d])
                              - 0.5 * math.log(2 * math.pi) for d in range(3))
    assert torch.allclose(scores, brute, atol=1e-5)
    expected = -np.mean([float(brute[i, i]) - math.log(np.mean([math.exp(float(brute[i, j])) for j in range(4)]))
                         for i in range(4)])
    assert float(cpc_bound(scores)) == pytest.approx(expected, rel=1e-5)
    assert float(cpc_bound(scores)) >= -math.log(4) - 1e-6  # the bound never exceeds log B nats


def test_pc3_loss_terms_from_the_networks_by_hand():
    torch.manual_seed(0)
    model = PC3(PC3Config(**TINY, latent_noise=0.2, lam_nce=0.5, lam_c=2.0, lam_cur=3.0, norm_coeff=0.7))
    x, u, x_next = planar_batch(6)
    torch.manual_seed(1)
    terms = model.loss(x, u, x_next)
    torch.manual_seed(1)
    z = model.encoder(x)
    z_next = model.encoder(x_next) + 0.2 * torch.randn(6, 2)
    step, logvar = model.dynamics.head(model.dynamics.trunk(torch.cat([z, u], -1))).chunk(2, -1)
    mean, var = z + step, torch.exp(logvar)
    s = torch.stack([torch.stack([(-0.5 * (z_next[i] - mean[j]) ** 2 / var[j] - 0.5 * torch.log(2 * math.pi * var[j])).sum()
                                  for j in range(6)]) for i in range(6)])
    nce = -(s.diagonal() - torch.log(torch.exp(s).mean(1))).mean()
    consistency = -s.diagonal().mean()
    cur = curvature(model.mean_next, z, u, 0.1)  # its own draws come after the latent noise
    centre = (z.mean(0) ** 2).sum()
    assert float(terms["nce"]) == pytest.approx(float(nce), rel=1e-4, abs=1e-5)
    assert float(terms["consistency"]) == pytest.approx(float(consistency), rel=1e-4)
    assert float(terms["curvature"]) == pytest.approx(float(cur), rel=1e-4, abs=1e-9)
    assert float(terms["centre"]) == pytest.approx(float(centre), rel=1e-4)
    total = 0.5 * nce + 2.0 * consistency + 3.0 * cur + 0.7 * centre
    assert float(terms["loss"]) == pytest.approx(float(total), rel=1e-4)


def test_pcc_loss_terms_from_the_networks_by_hand():
    torch.manual_seed(0)
    cfg = PCCConfig(**TINY, decoder_widths=(32,), backward_widths=(8, 4, 8), lam_p=0.5, lam_c=2.0, lam_cur=3.0,
                    vae_coeff=0.1, determ_coeff=0.2)
    model = PCC(cfg)
    x, u, x_next = planar_batch(6)
    torch.manual_seed(1)
    terms = model.loss(x, u, x_next)
    torch.manual_seed(1)

    def gaussian(mu, logvar):
        return mu, torch.exp(logvar)

    def sample(mu, var):
        return mu + var.sqrt() * torch.randn_like(mu)

    def log_normal(v, mu, var):
        return (-0.5 * (v - mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)

    def bce(logits, target):
        p = torch.sigmoid(logits)
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).flatten(1).sum(-1)

    mu_t, var_t = gaussian(*model.encoder(x))
    mu_n, var_n = gaussian(*model.encoder(x_next))
    z_next = sample(mu_n, var_n)
    mu_q, var_q = gaussian(*model.backward_encoder(z_next, u, x))
    z_t = sample(mu_q, var_q)
    step, logvar_f = model.dynamics.head(model.dynamics.trunk(torch.cat([z_t, u], -1))).chunk(2, -1)
    kl = 0.5 * (var_q / var_t + (mu_t - mu_q) ** 2 / var_t - 1 + torch.log(var_t / var_q)).sum(-1)
    entropy = 0.5 * torch.log(2 * math.pi * math.e * var_n).sum(-1)
    consistency = (kl - entropy - log_normal(z_next, z_t + step, torch.exp(logvar_f))).mean()
    z_vae = sample(mu_t, var_t)
    prediction = bce(model.decoder(z_next), x_next).mean() + consistency
    vae = bce(model.decoder(z_vae), x).mean() + (0.5 * (var_t + mu_t ** 2 - 1 - torch.log(var_t)).sum(-1)).mean()
    determ = bce(model.decoder(model.mean_next(mu_t, u)), x_next).mean()
    cur = curvature(model.mean_next, sample(mu_t, var_t), u, cfg.delta)
    for name, value in (("consistency", consistency), ("prediction", prediction), ("vae", vae),
                        ("determ", determ), ("curvature", cur)):
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-3, abs=1e-7), name
    total = 0.5 * prediction + 2.0 * consistency + 3.0 * cur + 0.1 * vae + 0.2 * determ
    assert float(terms["loss"]) == pytest.approx(float(total), rel=1e-3)


@pytest.mark.parametrize("make", [
    lambda: PC3(PC3Config(**TINY)),
    lambda: PCC(PCCConfig(**TINY, decoder_widths=(32,), backward_widths=(16, 4, 16))),
], ids=["pc3", "pcc"])
def test_a_tiny_model_s_loss_falls_on_planar_data(make):
    torch.manual_seed(0)
    model = make()
    x, u, x_next = planar_batch(64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for step in range(120):
        loss = model.loss(x, u, x_next)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss))
    first, last = np.mean(values[:5]), np.mean(values[-5:])
    assert last < first - 0.2 * abs(first), (first, last)
    a, b, o = model.linearize(torch.zeros(3, 2), torch.zeros(3, 2))  # iLQR's pieces: (B, Z, Z), (B, Z, U), (B, Z)
    assert a.shape == (3, 2, 2) and b.shape == (3, 2, 2) and o.shape == (3, 2)


DATA = 'name = "pl"\nenv = "foresight/Planar-v0"\nepisodes = 60\nsteps = 2\nseed = 2\nshard_size = 30\n'
RECIPE = """
name = "{name}"
data = "pl"
[model]
kind = "e2c"
preset = "planar"
variant = "{variant}"
encoder_widths = [32]
transition_widths = [16]
{extra}
[train]
steps = 4
batch_size = 16
weight_decay = 1e-3
val_every = 2
val_batches = 1
sample_every = 4
checkpoint_every = 2
log_every = 1
loader_workers = 0
"""
SUITE = """
name = "reach"
env = "foresight/Planar-v0"
kind = "goal_image"
tasks = 1
seed = 1
steps = 2
start_low = [3.0, 3.0]
start_high = [7.0, 7.0]
goal_states = [[20.0, 20.0]]
region_radius = 2.0
[cem]
samples = 20
elites = 4
iterations = 2
horizon = 3
repeat = 1
[ilqr]
horizon = 3
iterations = 2
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pcc")
    (root / "pl.toml").write_text(DATA)
    collect.collect(recipes.load(collect.CollectRecipe, root / "pl.toml"), root / "pl", progress=False)
    return root


def write_recipe(root, name, variant, extra=""):
    path = root / f"{name}.toml"
    path.write_text(RECIPE.format(name=name, variant=variant, extra=extra))
    return path


@pytest.mark.parametrize("variant, extra", [("pc3", ""), ("pcc", "decoder_widths = [32]\nbackward_widths = [8, 4, 8]")])
def test_trained_runs_load_plan_with_cem_and_ilqr_and_draw_the_latent_map(workdir, variant, extra):
    path = write_recipe(workdir, variant, variant, extra)
    run = training.train(recipes.load(training.TrainRecipe, path), path, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in rows if "val_loss" in row][-1]
    assert "val_latent_error_over_copy" in val and ("val_psnr" in val) == (variant == "pcc")
    assert (run / "latent_map.png").exists() and -1 <= json.loads((run / "latent_map.json").read_text())[
        "map_rank_correlation"] <= 1
    assert list((run / "samples").glob("*.png"))
    model, learner, resolved, _ = load_run(run)
    assert type(model).__name__ == variant.upper() and resolved["model_config"]["model"] == variant
    (workdir / "suite.toml").write_text(SUITE)
    s = suites.load(workdir / "suite.toml")
    summary = mpc.run_suite(s, workdir / f"plan_{variant}", LatentModel(model), ["cem", "ilqr"], progress=False)
    for planner in ("cem", "ilqr"):
        assert summary[planner]["tasks"] == 1 and 0 <= summary[planner]["percent_in_goal"] <= 100


@pytest.mark.parametrize("variant, extra, message", [
    ("pc3", "decoder_widths = [32]", "unknown key 'model.decoder_widths'"),
    ("pc3", "lam_cur = -1.0", "key 'model.lam_cur'"),
    ("pcc", "backward_widths = [8, 8]", "key 'model.backward_widths': expected a list of 3"),
    ("pcc", "delta = 0.0", "key 'model.delta'"),
])
def test_bad_recipes_name_the_key(workdir, variant, extra, message):
    path = write_recipe(workdir, "bad", variant, extra)
    with pytest.raises(ForesightError, match=message):
        training.train(recipes.load(training.TrainRecipe, path), path, progress=False)


def test_a_preset_the_variant_lacks_is_named(workdir):
    path = write_recipe(workdir, "bad_preset", "pc3")
    path.write_text(path.read_text().replace('preset = "planar"', 'preset = "point_push"'))
    with pytest.raises(ForesightError, match="key 'model.preset': pc3 has the presets planar, pendulum"):
        training.train(recipes.load(training.TrainRecipe, path), path, progress=False)


def test_bad_inputs_to_the_models_name_the_argument():
    model = PC3(PC3Config(**TINY))
    x, u, x_next = planar_batch(2)
    with pytest.raises(ForesightError, match=r"x_t: expected shape \(B, 1, 40, 40\)"):
        model.loss(x[:, :, :20], u, x_next)
    with pytest.raises(ForesightError, match=r"u_t: expected shape \(2, 2\)"):
        model.loss(x, u[:, :1], x_next)
    with pytest.raises(ForesightError, match="x_next: expected pixel values in"):
        model.loss(x, u, x_next * 3)
    with pytest.raises(ForesightError, match="PCC\\(config\\): expected a PCCConfig"):
        PCC(PC3Config(**TINY))
