"""Tests for foresight.models.video: CDNA / DNA / SNA and designated-pixel propagation."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from foresight import recipes
from foresight.errors import ForesightError
from foresight.learners import TrainSettings
from foresight.learners.video import VideoLearner
from foresight.models.video import (
    VideoPrediction,
    VideoPredictionConfig,
    VideoPredictionModel,
    scheduled_sampling_prob,
)
from foresight.models.transforms import cdna_composite_per_pixel, cdna_transform, dna_transform


def _flops_per_frame():
    """benchmarks/video.py's FLOP count of one predicted frame (the benchmark's figure, tested here)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "video.py"
    spec = importlib.util.spec_from_file_location("benchmark_video", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.flops_per_frame


flops_per_frame = _flops_per_frame()

VARIANTS = ["cdna", "dna", "sna"]
TINY = dict(widths=(4, 4, 8, 8, 8, 8, 4), lstm_kernel=3, num_kernels=3, transform_kernel=3)


def tiny_model(variant="cdna", size=(16, 16), channels=3, action_dim=2, state_dim=0, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = VideoPredictionConfig.small(variant, image_size=size, channels=channels, action_dim=action_dim,
                                      state_dim=state_dim, **{**TINY, **kw})
    return VideoPredictionModel(cfg)


def delta(B, K, H, W, points):
    """(B, K, H, W) distributions with all mass on points[k] = (row, col)."""
    d = torch.zeros(B, K, H, W)
    for k, (r, c) in enumerate(points):
        d[:, k, r, c] = 1.0
    return d


def force_transform(model, tap, candidate=1, logit=30.0):
    """Make every predicted kernel put (almost) all its weight on `tap` = (i, j) and the masks choose
    compositing candidate `candidate` (0 = current frame, 1 = first transformed image)."""
    cfg = model.config
    k = cfg.transform_kernel
    one_hot = torch.zeros(k * k)
    one_hot[tap[0] * k + tap[1]] = logit
    with torch.no_grad():
        model.kernels.weight.zero_()
        model.kernels.bias.copy_(one_hot.repeat(cfg.num_kernels if cfg.transform == "cdna" else 1))
        model.masks.weight.zero_()
        model.masks.bias.zero_()
        model.masks.bias[candidate] = logit


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("state_dim", [0, 3])
def test_output_shapes(variant, state_dim):
    model = tiny_model(variant, size=(16, 24), state_dim=state_dim)
    B, T, K = 2, 5, 4
    frames = torch.rand(B, T + 1, 3, 16, 24)
    actions = torch.randn(B, T, 2)
    states = torch.randn(B, T + 1, state_dim) if state_dim else None
    pixels = torch.softmax(torch.randn(B, K, 16 * 24), -1).view(B, K, 16, 24)
    out = model(frames, actions, states, pixels, num_context=2)
    assert isinstance(out, VideoPrediction)
    assert out.frames.shape == (B, T, 3, 16, 24)
    assert out.pixels.shape == (B, T - 2 + 1, K, 16, 24)
    if state_dim:
        assert out.states.shape == (B, T, state_dim)
    else:
        assert out.states is None
    assert out.frames.min() >= 0 and out.frames.max() <= 1  # convex combinations of [0, 1] images
    # the planner's call: only the context frames
    out = model(frames[:, :2], actions, None if states is None else states[:, :2], num_context=2)
    assert out.frames.shape == (B, T, 3, 16, 24) and out.pixels is None


# ---------------------------------------------------------------------------- designated pixels


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel_norm", ["relu", "softmax"])
def test_pixel_mass_stays_one_at_every_step(variant, kernel_norm):
    model = tiny_model(variant, kernel_norm=kernel_norm, seed=1)
    B, T, H, W = 3, 7, 16, 16
    frames, actions = torch.rand(B, 2, 3, H, W), torch.randn(B, T, 2) * 3
    corner_and_edge = delta(B, 2, H, W, [(0, 0), (H - 1, 7)])  # mass at the border, where padding leaks
    spread = torch.softmax(torch.randn(B, 1, H * W) * 3, -1).view(B, 1, H, W)
    pixels = torch.cat([corner_and_edge, spread], 1)
    out = model(frames, actions, pixels=pixels, num_context=2)
    mass = out.pixels.sum((-2, -1))  # (B, T - 1, K)
    assert mass.shape == (B, T - 1, 3)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    assert out.pixels.min() >= 0
    # the first predicted distribution is no longer a delta: the random kernels did move it
    assert out.pixels[:, 0, 0].max() < 0.999


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_kernels_keep_a_delta_in_place(variant):
    model = tiny_model(variant, channels=1)
    r = model.config.transform_kernel // 2
    force_transform(model, tap=(r, r))
    H = W = 16
    image = delta(2, 1, H, W, [(6, 9)])  # the frame is the delta itself
    frames = torch.cat([image[:, None]] * 2, 1)  # (B, 2, 1, H, W)
    out = model(frames, torch.randn(2, 4, 2), pixels=image, num_context=2)
    for t in range(out.pixels.shape[1]):
        torch.testing.assert_close(out.pixels[:, t], image, atol=1e-6, rtol=0)
    for t in range(out.frames.shape[1]):
        torch.testing.assert_close(out.frames[:, t], image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("move", [(0, 1), (1, 0), (-1, -1)])
def test_shift_kernel_moves_pixels_and_frames_alike(variant, move):
    """A kernel reading from (row - dr, col - dc) moves content by (dr, dc), image and pixels alike."""
    model = tiny_model(variant, channels=1)
    r = model.config.transform_kernel // 2
    force_transform(model, tap=(r - move[0], r - move[1]))
    H = W = 16
    start = (7, 6)
    image = delta(2, 1, H, W, [start])
    out = model(image[:, None], torch.randn(2, 4, 2), pixels=image, num_context=1)
    assert out.pixels.shape[1] == 4  # frames 1..4
    for t in range(4):
        expected = delta(2, 1, H, W, [(start[0] + (t + 1) * move[0], start[1] + (t + 1) * move[1])])
        torch.testing.assert_close(out.pixels[:, t], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.frames[:, t], expected, atol=1e-6, rtol=0)  # the same transform


def test_skip_candidate_brings_back_the_first_frame_and_the_given_distribution():
    model = tiny_model("sna", channels=1)
    force_transform(model, tap=(0, 0), candidate=model.config.num_candidates - 1)  # choose the skip
    H = W = 16
    first = torch.rand(2, 1, 1, H, W)
    second = torch.rand(2, 1, 1, H, W)
    pixels = delta(2, 1, H, W, [(3, 4)])
    out = model(torch.cat([first, second], 1), torch.randn(2, 4, 2), pixels=pixels, num_context=2)
    for t in range(4):
        torch.testing.assert_close(out.frames[:, t], first[:, 0], atol=1e-6, rtol=0)
    for t in range(3):
        torch.testing.assert_close(out.pixels[:, t], pixels, atol=1e-6, rtol=0)


def test_transforms_agree_with_each_other():
    """A DNA kernel that is the same at every pixel is a CDNA kernel."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    kernel = torch.softmax(torch.randn(2, 1, 9), -1)  # (B, N=1, 3*3)
    by_cdna = cdna_transform(images, kernel.view(2, 1, 3, 3))[:, 0]
    by_dna = dna_transform(images, kernel.view(2, 9, 1, 1).expand(2, 9, 8, 8))
    torch.testing.assert_close(by_cdna, by_dna, atol=1e-6, rtol=0)



def test_cdna_composite_is_the_sum_of_the_masked_moved_images():
    """The planner's CDNA path (one kernel per pixel) against moving N copies and summing them under the masks."""
    torch.manual_seed(0)
    images, kernels = torch.rand(3, 4, 12, 10), torch.softmax(torch.randn(3, 5, 49), -1).view(3, 5, 7, 7)
    masks = torch.softmax(torch.randn(3, 6, 12, 10), 1)
    direct = images * masks[:, :1] + (cdna_transform(images, kernels) * masks[:, 1:, None]).sum(1)
    torch.testing.assert_close(cdna_composite_per_pixel(images, kernels, masks), direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_planning_path_predicts_what_the_training_path_does(variant):
    """Without gradients and with a shared context (the planner's call) the model takes its fast path: the same
    frames and pixel distributions as the reference (training) path, pixel mass still 1."""
    model = tiny_model(variant, state_dim=2).eval()
    B, T = 5, 6
    frames = torch.rand(1, 2, 3, 16, 16).expand(B, -1, -1, -1, -1)
    states = torch.randn(1, 2, 2).expand(B, -1, -1)
    actions = torch.randn(B, T, 2)
    actions[:, 0] = actions[0, 0]  # the past action, shared
    pixels = delta(B, 2, 16, 16, [(3, 4), (12, 9)])
    reference = model(frames, actions, states, pixels=pixels)
    with torch.inference_mode():
        fast = model(frames, actions, states, pixels=pixels, shared_context=True)
    for name in ("frames", "states", "pixels"):
        torch.testing.assert_close(getattr(fast, name), getattr(reference, name).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.pixels.sum((-2, -1)), torch.ones(B, T - 1, 2), atol=1e-5, rtol=0)


def test_shared_context_refuses_a_batch_whose_context_differs():
    model = tiny_model("cdna")
    frames, actions = torch.rand(3, 2, 3, 16, 16), torch.randn(3, 4, 2)
    with pytest.raises(ForesightError, match="frames: shared_context=True .* sequence 1 differs"):
        model(frames, actions, shared_context=True)
    same = frames[:1].expand(3, -1, -1, -1, -1)
    with pytest.raises(ForesightError, match="actions: shared_context=True"):
        model(same, actions, shared_context=True)
    with pytest.raises(ForesightError, match="shared_context: scheduled sampling"):
        model(same, actions, sample_prob=0.5, shared_context=True)


def test_conv_lstm_cell_is_finns_lstm():
    """The cell's one-sigmoid gates (tanh(j) as 2 sigmoid(2j) - 1, the forget bias in the convolution) against the
    LSTM written out from its convolution's gates, with gradients too."""
    from foresight.models.video import ConvLSTMCell

    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 4, 3, forget_bias=1.0)
    x, h, c = torch.randn(2, 3, 5, 6), torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    i, j, f, o = cell.conv(torch.cat([x, h], 1)).chunk(4, 1)
    c_ref = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(j)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    out, (h_new, c_new) = cell(x, (h, c))
    torch.testing.assert_close(c_new, c_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_new, h_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, cell.norm(h_ref), atol=1e-5, rtol=1e-5)
    grad = torch.autograd.grad(h_new.sum(), cell.conv.weight)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(h_ref.sum(), cell.conv.weight)[0], atol=1e-5, rtol=1e-4)


def test_cdna_gradients_agree_with_finite_differences():
    """The CDNA transform's hand-written backward (two convolutions) against gradcheck in float64."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    kernels = torch.rand(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cdna_transform, (images, kernels))
    kernels_only = torch.rand(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: cdna_transform(images.detach(), k), (kernels_only,))

# ---------------------------------------------------------------------------- rollout semantics


def test_scheduled_sampling_with_prob_one_is_teacher_forcing():
    model = tiny_model("cdna", state_dim=2)
    B, T = 4, 5
    frames, actions, states = torch.rand(B, T + 1, 3, 16, 16), torch.randn(B, T, 2), torch.randn(B, T + 1, 2)
    forced = model(frames, actions, states, num_context=T)  # every input is ground truth
    sampled = model(frames, actions, states, num_context=2, sample_prob=1.0)
    torch.testing.assert_close(sampled.frames, forced.frames)
    torch.testing.assert_close(sampled.states, forced.states)
    open_loop = model(frames, actions, states, num_context=2)
    assert not torch.allclose(open_loop.frames[:, 2:], forced.frames[:, 2:])
    torch.testing.assert_close(open_loop.frames[:, :2], forced.frames[:, :2])  # the context agrees
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    half1 = model(frames, actions, states, sample_prob=0.5, generator=g1)
    half2 = model(frames, actions, states, sample_prob=0.5, generator=g2)
    torch.testing.assert_close(half1.frames, half2.frames)  # reproducible with a generator
    assert scheduled_sampling_prob(0) > 0.99 and scheduled_sampling_prob(20000) < 1e-6


def test_actions_change_the_prediction():
    model = tiny_model("dna")
    frames, actions = torch.rand(2, 2, 3, 16, 16), torch.randn(2, 4, 2)
    a = model(frames, actions).frames
    b = model(frames, actions + 1.0).frames
    assert (a - b).abs().max() > 1e-4


def test_inference_mode_bf16_autocast_and_channels_last():
    model = tiny_model("sna").to(memory_format=torch.channels_last).eval()
    frames, actions = torch.rand(3, 2, 3, 16, 16), torch.randn(3, 4, 2)
    pixels = delta(3, 1, 16, 16, [(15, 15)])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames, actions, pixels=pixels)
    assert out.frames.dtype == torch.float32 and torch.isfinite(out.frames).all()
    mass = out.pixels.sum((-2, -1))
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    with torch.inference_mode():
        ref = model(frames, actions, pixels=pixels)
    assert (out.frames - ref.frames).abs().max() < 0.05  # bf16 is close to float32


# ---------------------------------------------------------------------------- learning


def moving_square(B, T, generator, size=16):
    """A 3x3 bright square on a dark background, moved by the action (a velocity in {-1, 0, 1}^2)."""
    pos = torch.randint(4, size - 7, (B, 2), generator=generator)
    actions = torch.randint(-1, 2, (B, T, 2), generator=generator).float()
    frames = torch.zeros(B, T + 1, 1, size, size)
    for t in range(T + 1):
        for b in range(B):
            r, c = pos[b].tolist()
            frames[b, t, 0, r:r + 3, c:c + 3] = 1.0
        if t < T:
            pos = pos + actions[:, t].long()
    return frames, actions


def test_training_on_a_moving_square_beats_copying_the_last_frame():
    torch.manual_seed(0)
    model = tiny_model("cdna", channels=1, num_kernels=4, kernel_norm="softmax")
    gen = torch.Generator().manual_seed(0)
    test_frames, test_actions = moving_square(64, 3, gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(100):
        frames, actions = moving_square(8, 3, gen)
        terms = model.loss(frames, actions, num_context=1)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert set(terms) == {"loss", "image_mse"}
    with torch.no_grad():
        pred = model(test_frames[:, :1], test_actions, num_context=1).frames
    model_mse = (pred - test_frames[:, 1:]).pow(2).mean()
    copy_mse = (test_frames[:, :1] - test_frames[:, 1:]).pow(2).mean()
    assert model_mse < 0.3 * copy_mse, (model_mse.item(), copy_mse.item())


def test_loss_with_states():
    model = tiny_model("sna", state_dim=2)
    frames, actions, states = torch.rand(2, 5, 3, 16, 16), torch.randn(2, 4, 2), torch.randn(2, 5, 2)
    terms = model.loss(frames, actions, states)
    assert set(terms) == {"loss", "image_mse", "state_mse"}
    torch.testing.assert_close(terms["loss"], terms["image_mse"] + 1e-4 * terms["state_mse"])
    terms["loss"].backward()
    assert model.state_head.weight.grad.abs().sum() > 0 and model.lstm1.conv.weight.grad.abs().sum() > 0


def test_l1_image_loss_is_the_mean_absolute_error():
    model = tiny_model("cdna", state_dim=2)
    frames, actions, states = torch.rand(2, 5, 3, 16, 16), torch.randn(2, 4, 2), torch.randn(2, 5, 2)
    terms = model.loss(frames, actions, states, image_loss="l1")
    with torch.no_grad():
        pred = model(frames, actions, states, num_context=2).frames[:, 1:]
    torch.testing.assert_close(terms["image_l1"], (pred - frames[:, 2:]).abs().mean())
    torch.testing.assert_close(terms["image_mse"], (pred - frames[:, 2:]).pow(2).mean())
    torch.testing.assert_close(terms["loss"], terms["image_l1"] + 1e-4 * terms["state_mse"])
    with pytest.raises(ForesightError, match="image_loss: expected 'mse' or 'l1', got 'l2'"):
        model.loss(frames, actions, states, image_loss="l2")


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change, words", [
    (dict(frames=torch.rand(2, 2, 3, 16, 8)), ["frames", "(3, 16, 16)"]),
    (dict(frames=torch.rand(2, 2, 1, 16, 16)), ["frames", "(3, 16, 16)"]),
    (dict(frames=torch.randint(0, 255, (2, 2, 3, 16, 16), dtype=torch.uint8)), ["frames", "float"]),
    (dict(frames=torch.rand(3, 2, 3, 16, 16)), ["frames", "batch"]),
    (dict(frames=torch.rand(2, 7, 3, 16, 16)), ["frames", "T + 1 = 5"]),
    (dict(frames=torch.rand(2, 1, 3, 16, 16)), ["frames", "num_context=2"]),
    (dict(actions=torch.randn(2, 4, 3)), ["actions", "action_dim=2"]),
    (dict(actions=torch.randn(2, 1, 2)), ["actions", "num_context=2"]),
    (dict(pixels=torch.full((2, 1, 8, 8), 1 / 64)), ["pixels", "(2, K, 16, 16)"]),
    (dict(pixels=torch.full((2, 1, 16, 16), 1.0)), ["pixels", "summing to 1"]),
    (dict(states=torch.randn(2, 5, 2)), ["states", "state_dim=0"]),
    (dict(num_context=0), ["num_context"]),
    (dict(sample_prob=1.5), ["sample_prob"]),
])
def test_bad_inputs_raise_foresight_error(change, words):
    model = tiny_model("cdna")
    args = dict(frames=torch.rand(2, 2, 3, 16, 16), actions=torch.randn(2, 4, 2), states=None,
                pixels=delta(2, 1, 16, 16, [(1, 1)]), num_context=2, sample_prob=0.0)
    args.update(change)
    with pytest.raises(ForesightError) as err:
        model(**args)
    for word in words:
        assert word in str(err.value)


def test_missing_states_raise_foresight_error():
    model = tiny_model("cdna", state_dim=3)
    with pytest.raises(ForesightError, match="states.*state_dim=3"):
        model(torch.rand(2, 2, 3, 16, 16), torch.randn(2, 4, 2))
    with pytest.raises(ForesightError, match="states.*state_dim=3"):
        model(torch.rand(2, 2, 3, 16, 16), torch.randn(2, 4, 2), torch.randn(2, 2, 2))


@pytest.mark.parametrize("field, value, expected", [
    ("image_size", (60, 64), "divisible by 8"), ("image_size", (64,), "a list of 2"),
    ("channels", 0, ">= 1"), ("action_dim", 1.5, "an integer"), ("state_dim", -1, ">= 0"),
    ("widths", (8, 8, 8), "a list of 7"), ("widths", (8, 8, 8, 8, 8, 8, 0), ">= 1"), ("lstm_kernel", 4, "odd"),
    ("transform", "stp", "one of"), ("num_kernels", 0, ">= 1"), ("transform_kernel", 0, ">= 1"),
    ("transform_kernel", 4, "odd"), ("skip", "yes", "true or false"), ("kernel_norm", "sigmoid", "one of"),
    ("forget_bias", float("nan"), "a finite number"),
])
def test_bad_config_names_the_field(field, value, expected):
    """A config is checked where it is read (recipes.from_dict), and the mistake names its key."""
    good = dict(image_size=(64, 64), channels=3, action_dim=2)
    with pytest.raises(ForesightError, match=rf"cfg.toml: key 'model.{field}(\[\d\])?': expected .*{expected}"):
        recipes.from_dict(VideoPredictionConfig, {**good, field: value}, "cfg.toml", prefix="model.")
    assert recipes.from_dict(VideoPredictionConfig, good, "cfg.toml", prefix="model.") == VideoPredictionConfig(**good)


def test_presets_and_config_round_trip():
    paper = VideoPredictionConfig.paper("sna", image_size=(64, 64), channels=3, action_dim=2)
    assert paper.widths == (32, 32, 64, 64, 128, 64, 32) and paper.lstm_kernel == 5
    assert paper.transform == "dna" and paper.skip and paper.variant == "sna"
    read = recipes.from_dict(VideoPredictionConfig, {**dataclasses.asdict(paper), "image_size": [64, 64],
                                                     "widths": list(paper.widths)})
    assert read.image_size == (64, 64) and read == paper  # lists (TOML, JSON) become tuples
    assert VideoPredictionConfig(**dataclasses.asdict(paper)) == paper
    cdna = VideoPredictionConfig.paper(image_size=(64, 64), channels=3, action_dim=2)
    assert cdna.variant == "cdna" and cdna.num_kernels == 10 and cdna.transform_kernel == 5
    small = VideoPredictionConfig.small("dna", image_size=(64, 64), channels=3, action_dim=2)
    assert flops_per_frame(small) < flops_per_frame(paper) / 5


SHAPES = {"frames": [13, 64, 64, 3], "actions": [12, 2], "states": [13, 4], "points": [13, 1, 2]}


def test_the_learner_builds_the_config_from_preset_variant_and_data():
    """model.preset and model.variant are plain defaults under the recipe's keys; the data sets the sizes."""
    learner = VideoLearner.from_recipe({"preset": "paper", "variant": "sna", "use_states": True, "num_kernels": 4},
                                       TrainSettings(), SHAPES, "r.toml")
    assert learner.config == VideoPredictionConfig.paper("sna", image_size=(64, 64), channels=3, action_dim=2,
                                                         state_dim=4, num_kernels=4)
    assert not learner.resize and learner.window == 12
    small = VideoLearner.from_recipe({"image_size": [32, 32]}, TrainSettings(), SHAPES, "r.toml")
    assert small.config == VideoPredictionConfig.small("sna", image_size=(32, 32), channels=3, action_dim=2)
    assert small.resize


@pytest.mark.parametrize("table, message", [
    ({"variant": "stp"}, r"key 'model.variant': expected one of \['cdna', 'dna', 'sna'\], got 'stp'"),
    ({"preset": "huge"}, r"key 'model.preset': expected one of \['paper', 'small'\]"),
    ({"use_states": 1}, r"key 'model.use_states': expected true or false"),
    ({"channels": 1}, r"unknown key 'model.channels'"),  # the data sets it
    ({"widths": [8, 8]}, r"key 'model.widths': expected a list of 7"),
    ({"lstm_kernel": 2}, r"key 'model.lstm_kernel': expected an odd kernel size, got 2"),
])
def test_bad_model_tables_name_the_key(table, message):
    with pytest.raises(ForesightError, match=f"r.toml: {message}"):
        VideoLearner.from_recipe(table, TrainSettings(), SHAPES, "r.toml")


@pytest.mark.parametrize("variant", VARIANTS)
def test_flops_per_frame_matches_the_flop_counter(variant):
    model = tiny_model(variant, size=(16, 24), state_dim=2)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 1, 3, 16, 24), torch.randn(1, 1, 2), torch.randn(1, 1, 2), num_context=1)
    assert counter.get_total_flops() == flops_per_frame(model.config)


def test_tracking_loss_is_the_expected_distance_and_can_be_lowered():
    """track_px is the carried distribution's expected distance to the true pixels, and it trains."""
    from foresight.pixels import delta_distribution, expected_distance

    torch.manual_seed(0)
    cfg = VideoPredictionConfig.small("cdna", skip=True, image_size=(16, 16), channels=3, action_dim=2,
                                      widths=(4, 4, 8, 8, 8, 8, 4), transform_kernel=5)
    model = VideoPredictionModel(cfg)
    frames, actions = torch.rand(4, 5, 3, 16, 16), torch.rand(4, 4, 2) * 2 - 1
    points = torch.tensor([4.0, 5.0]) + torch.arange(5.0)[None, :, None, None] * torch.tensor([1.0, 1.5])
    points = points.expand(4, 5, 1, 2)  # an object sliding down-right, 1.8 px a step
    terms = model.loss(frames, actions, points=points, track_weight=0.01)
    with torch.no_grad():
        out = model(frames[:, :2], actions, pixels=delta_distribution(points[:, 1], 16, 16), num_context=2)
        assert torch.allclose(terms["track_px"], expected_distance(out.pixels, points[:, 2:]).mean(), atol=1e-4)
    assert torch.allclose(terms["loss"], terms["image_mse"] + 0.01 * terms["track_px"])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = float(terms["track_px"].detach())
    for _ in range(30):
        loss = model.loss(frames, actions, points=points, track_weight=1.0)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    last = float(loss["track_px"].detach())
    assert last < 0.7 * first, (first, last)


def test_action_bounds_scale_actions_to_unit_range():
    """A model given the environment's action bounds predicts from a in [low, high] what the same weights predict
    from (a - centre) / half without them (PushT's targets in 0..512 read as -1..1)."""
    plain = tiny_model("cdna")
    scaled = tiny_model("cdna", action_low=(0.0, 100.0), action_high=(512.0, 200.0))
    scaled.load_state_dict(plain.state_dict())  # the bounds are config, not weights
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 4, 3, 16, 16, generator=g)
    unit = torch.rand(2, 3, 2, generator=g) * 2 - 1
    actions = torch.tensor([256.0, 150.0]) + unit * torch.tensor([256.0, 50.0])
    with torch.no_grad():
        a, b = plain(frames, unit, num_context=2).frames, scaled(frames, actions, num_context=2).frames
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ForesightError, match="action_low"):
        recipes.from_dict(VideoPredictionConfig, dict(image_size=(16, 16), channels=3, action_dim=2,
                                                      action_low=(1.0, 0.0), action_high=(0.0, 1.0)), "m.toml")
