"""Action-conditioned video prediction: CDNA, DNA and SNA, in one file.

Finn, Goodfellow & Levine 2016, "Unsupervised Learning for Physical Interaction through Video
Prediction" (CDNA, DNA); Ebert, Finn, Lee & Levine 2017, "Self-Supervised Visual Planning with
Temporal Skip Connections" (SNA, designated pixels).

The model never paints a frame from scratch. At every step a stack of seven layer-normalised
convolutional LSTMs looks at the current frame (and the action, and the low-dimensional state)
and predicts how to *move* that frame:

    cdna  N kernels (k x k, taps sum to 1), each applied to the whole image;
    dna   one k x k kernel per pixel;

plus per-pixel masks (softmax over candidates) that composite the candidates

    [current frame (static background), the transformed frame(s), first context frame if skip]

into the next frame. With `skip=True` (SNA's temporal skip connection) the first context frame is a
candidate, so pixels hidden by the arm can reappear. Finn's CDNA also composites a generated image;
it is left out here because it has no meaning for designated-pixel distributions. Kernel taps are
normalised with a softmax by default (Finn's relu-and-divide is `kernel_norm="relu"`; it learned
several times slower on small problems).

Designated pixels are distributions over the image, (B, K, H, W), each summing to 1. They ride
along as extra image channels: the very same kernels and masks move them, so frames and pixels can
never disagree. Two things would leak mass: zero padding at the border (mass pushed off the image)
and compositing (masks form a per-pixel convex combination, which is not mass-preserving). So after
every step each distribution is renormalised to total mass 1.

The kernels' convention and the transforms themselves are in ``models/transforms.py``.

API:
    config = VideoPredictionConfig.paper(image_size=(64, 64), channels=3, action_dim=2, variant="sna")
    model = VideoPredictionModel(config)
    out = model(frames, actions, states=None, pixels=None, num_context=2)   # -> VideoPrediction
    terms = model.loss(frames, actions, states, num_context=2, sample_prob=p)  # training
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from foresight.errors import ForesightError
from foresight.models import transforms
from foresight.pixels import delta_distribution, expected_distance, in_image
from foresight.recipes import spec

TRANSFORMS = ("cdna", "dna")
VARIANTS = ("cdna", "dna", "sna")  # sna = dna + skip (Ebert et al. 2017)
KERNEL_NORMS = ("relu", "softmax")
STATE_LOSS_WEIGHT = 1e-4  # Finn's state_cost


# -----------------------------------------------------------------------------
# configuration


PRESETS = {  # the recipe's model.preset; model.variant then picks the transform (``variant_fields``)
    "paper": dict(widths=(32, 32, 64, 64, 128, 64, 32), lstm_kernel=5),  # Finn et al.'s sizes
    # a quarter of the paper's widths with 3x3 conv-LSTMs: ~37x fewer FLOPs (0.09 GFLOP per 64x64 frame). On 2
    # CPU cores it beat copy-last-frame by 4 dB within 4 minutes of training on a synthetic 64x64 pushing
    # scene, and trained faster per second than 16-16-32-32-64-32-16
    "small": dict(widths=(8, 8, 16, 16, 32, 16, 8), lstm_kernel=3),
}


def variant_fields(variant: str) -> dict:
    """The config fields of a variant: 10 CDNA kernels or per-pixel DNA kernels, 5x5; SNA adds the skip."""
    return dict(transform="cdna" if variant == "cdna" else "dna", skip=variant == "sna", num_kernels=10,
                transform_kernel=5)


@dataclass(frozen=True, kw_only=True)
class VideoPredictionConfig:
    """The model's architecture. Checked where it is read (``foresight.recipes.from_dict``); a config built
    in Python is taken as it is."""

    image_size: tuple[int, int] = spec(min=8, help="(H, W), both divisible by 8 (three stride-2 stages)")
    channels: int = spec(min=1, help="3 for colour, 1 for grey")
    action_dim: int = spec(min=1)
    state_dim: int = spec(0, min=0, help="0: no low-dimensional state; else it is tiled in at the bottleneck "
                                         "and predicted")
    widths: tuple[int, int, int, int, int, int, int] = spec((32, 32, 64, 64, 128, 64, 32), min=1,
                                                           help="channels of lstm1 .. lstm7")
    lstm_kernel: int = spec(5, min=1, help="conv-LSTM kernel size (odd)")
    transform: str = spec("cdna", choices=TRANSFORMS)
    num_kernels: int = spec(10, min=1, help="CDNA kernels (ignored by dna)")
    transform_kernel: int = spec(5, min=1, help="size of the CDNA / DNA kernels (odd)")
    skip: bool = spec(False, help="SNA temporal skip: the first context frame is a compositing candidate")
    kernel_norm: str = spec("softmax", choices=KERNEL_NORMS, help="'relu': Finn's relu(x - eps) + eps, divided "
                                                                  "by the sum (learns slower)")
    forget_bias: float = 1.0
    action_low: tuple[float, ...] = spec((), help="the environment's action bounds (set from the dataset): the "
                                                  "network sees actions scaled from [low, high] to [-1, 1], so "
                                                  "that a target position in 0..512 reads as a velocity in -1..1 "
                                                  "does (empty: as they are)")
    action_high: tuple[float, ...] = spec(())

    def checks(self):
        if len(self.action_low) != len(self.action_high):
            yield "action_high", f"as many numbers as action_low ({len(self.action_low)})"
        elif any(lo >= hi for lo, hi in zip(self.action_low, self.action_high)):
            yield "action_low", "below action_high in every dimension"
        if any(s % 8 for s in self.image_size):
            yield "image_size", "(H, W) divisible by 8 (three stride-2 stages)"
        for name in ("lstm_kernel", "transform_kernel"):
            if getattr(self, name) % 2 == 0:
                yield name, "an odd kernel size"

    @classmethod
    def paper(cls, variant: str = "cdna", **fields) -> "VideoPredictionConfig":
        """Finn et al.'s sizes: lstm widths 32-32-64-64-128-64-32, 5x5 conv-LSTMs, 10 CDNA 5x5 kernels."""
        return cls(**{**PRESETS["paper"], **variant_fields(variant), **fields})

    @classmethod
    def small(cls, variant: str = "cdna", **fields) -> "VideoPredictionConfig":
        """A quarter of the paper's widths with 3x3 conv-LSTMs (``PRESETS``)."""
        return cls(**{**PRESETS["small"], **variant_fields(variant), **fields})

    @property
    def variant(self) -> str:
        return "sna" if self.transform == "dna" and self.skip else self.transform

    @property
    def num_candidates(self) -> int:
        """Compositing candidates: current frame, transformed frame(s), first frame if skip."""
        return 1 + (self.num_kernels if self.transform == "cdna" else 1) + int(self.skip)


class VideoPrediction(NamedTuple):
    frames: torch.Tensor  # (B, T, C, H, W) predictions of frames 1..T, float32 in [0, 1]
    states: torch.Tensor | None  # (B, T, S) predicted states 1..T, or None when state_dim == 0
    pixels: torch.Tensor | None  # (B, T - num_context + 1, K, H, W) distributions at frames num_context..T


# -----------------------------------------------------------------------------
# layers


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM (Shi et al. 2015) as Finn's basic_conv_lstm_cell: one convolution over
    [input, h] gives the four gates; the forget gate gets +forget_bias. The recurrent h stays raw;
    the output passed up the stack is layer-normalised (Finn normalises each LSTM's output)."""

    def __init__(self, in_channels: int, width: int, kernel: int, forget_bias: float):
        super().__init__()
        self.width, self.forget_bias = width, forget_bias
        self.conv = nn.Conv2d(in_channels + width, 4 * width, kernel, padding=kernel // 2)
        self.norm = nn.GroupNorm(1, width)  # layer norm over (C, H, W), per-channel gain and bias
        # gates [i, j, f, o]: j's pre-activation doubled (tanh(j) = 2 sigmoid(2j) - 1) and the forget bias added
        # in the convolution, so that one sigmoid covers all four: elementwise work over channel slices of a
        # small channels-last map cost more than the convolution itself
        one, zero = torch.ones(width), torch.zeros(width)
        self.register_buffer("gate_scale", torch.cat([one, 2 * one, one, one]), persistent=False)
        self.register_buffer("gate_shift", torch.cat([zero, zero, forget_bias * one, zero]), persistent=False)

    def forward(self, x, state):
        if state is None:  # zero state, kept in float32 even under autocast
            zeros = x.new_zeros(x.shape[0], self.width, *x.shape[2:], dtype=torch.float32)
            zeros = zeros.contiguous(memory_format=torch.channels_last)
            state = (zeros, zeros)
        h, c = state
        weight = self.conv.weight * self.gate_scale[:, None, None, None]
        bias = self.conv.bias * self.gate_scale + self.gate_shift
        z = F.conv2d(torch.cat([x, _batch(h.to(x.dtype), len(x))], 1), weight, bias, padding=self.conv.padding)
        i, j2, f, o = torch.sigmoid(z).chunk(4, 1)  # sigmoid(i), sigmoid(2j), sigmoid(f + forget_bias), ...
        c = torch.addcmul(f * c, i, 2 * j2 - 1)  # c = sigmoid(f + fb) c + sigmoid(i) tanh(j)
        h = o * torch.tanh(c)
        return self.norm(h), (h, c)


# -----------------------------------------------------------------------------
# the model


class VideoPredictionModel(nn.Module):
    """CDNA / DNA / SNA. See the module docstring; `forward` for the call."""

    def __init__(self, config: VideoPredictionConfig):
        super().__init__()
        if not isinstance(config, VideoPredictionConfig):
            raise ForesightError(f"config: expected a VideoPredictionConfig, got {type(config).__name__}")
        self.config = cfg = config
        w1, w2, w3, w4, w5, w6, w7 = cfg.widths
        H, W = cfg.image_size
        # the action bounds' centre and half range (not in the state dict: the config holds them)
        low, high = (torch.tensor(b, dtype=torch.float32) for b in (cfg.action_low, cfg.action_high))
        self.register_buffer("action_centre", (low + high) / 2, persistent=False)
        self.register_buffer("action_half", (high - low) / 2, persistent=False)
        k, fb = cfg.lstm_kernel, cfg.forget_bias

        def up(c):  # 3x3 stride-2 transposed convolution: doubles H and W
            return nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)

        # encoder: H/2 -> H/4 -> H/8
        self.enc0 = nn.Conv2d(cfg.channels, w1, 5, stride=2, padding=2)
        self.enc0_norm = nn.GroupNorm(1, w1)
        self.lstm1 = ConvLSTMCell(w1, w1, k, fb)
        self.lstm2 = ConvLSTMCell(w1, w2, k, fb)
        self.enc1 = nn.Conv2d(w2, w2, 3, stride=2, padding=1)
        self.lstm3 = ConvLSTMCell(w2, w3, k, fb)
        self.lstm4 = ConvLSTMCell(w3, w4, k, fb)
        self.enc2 = nn.Conv2d(w4, w4, 3, stride=2, padding=1)
        # bottleneck: action (and state) tiled over the H/8 x W/8 map
        self.enc3 = nn.Conv2d(w4 + cfg.action_dim + cfg.state_dim, w4, 1)
        self.lstm5 = ConvLSTMCell(w4, w5, k, fb)
        # decoder: H/8 -> H/4 (+ skip enc1) -> H/2 (+ skip enc0) -> H
        self.enc4 = up(w5)
        self.lstm6 = ConvLSTMCell(w5, w6, k, fb)
        self.enc5 = up(w6 + w2)
        self.lstm7 = ConvLSTMCell(w6 + w2, w7, k, fb)
        self.enc6 = up(w7 + w1)
        self.enc6_norm = nn.GroupNorm(1, w7 + w1)
        # heads
        kk = cfg.transform_kernel ** 2
        self.masks = nn.Conv2d(w7 + w1, cfg.num_candidates, 1)
        if cfg.transform == "cdna":  # kernels from the whole bottleneck map (fully connected)
            self.kernels = nn.Linear(w5 * (H // 8) * (W // 8), cfg.num_kernels * kk)
        else:  # one kernel per pixel from the last decoder layer
            self.kernels = nn.Conv2d(w7 + w1, kk, 1)
        if cfg.state_dim:  # next state = linear(state, action)
            self.state_head = nn.Linear(cfg.state_dim + cfg.action_dim, cfg.state_dim)

    # --- one step of the network: frame, action, state -> kernels, mask logits, next state

    def _network(self, frame, action, state, lstm):
        cfg = self.config
        # channels_last throughout: oneDNN's NCHW backward is up to 10x slower on CPU; cuDNN likes NHWC too
        frame = frame.contiguous(memory_format=torch.channels_last)
        enc0 = F.relu(self.enc0_norm(self.enc0(frame)))  # (B, w1, H/2, W/2)
        h1, lstm[0] = self.lstm1(enc0, lstm[0])
        h2, lstm[1] = self.lstm2(h1, lstm[1])
        enc1 = F.relu(self.enc1(h2))  # (B, w2, H/4, W/4)
        h3, lstm[2] = self.lstm3(enc1, lstm[2])
        h4, lstm[3] = self.lstm4(h3, lstm[3])
        enc2 = F.relu(self.enc2(h4))  # (B, w4, H/8, W/8)
        sa = action if state is None else torch.cat([action, _batch(state, len(action))], 1)  # (B, A [+ S])
        B = len(sa)  # the encoder's batch is 1 where the frame is shared (``forward``'s shared_context)
        smear = sa[:, :, None, None].expand(-1, -1, *enc2.shape[2:]).to(enc2.dtype)
        enc2, enc1, enc0 = _batch(enc2, B), _batch(enc1, B), _batch(enc0, B)
        enc3 = F.relu(self.enc3(torch.cat([enc2, smear], 1).contiguous(memory_format=torch.channels_last)))
        h5, lstm[4] = self.lstm5(enc3, lstm[4])  # (B, w5, H/8, W/8)
        enc4 = F.relu(self.enc4(h5))
        h6, lstm[5] = self.lstm6(enc4, lstm[5])  # (B, w6, H/4, W/4)
        enc5 = F.relu(self.enc5(torch.cat([h6, enc1], 1)))
        h7, lstm[6] = self.lstm7(enc5, lstm[6])  # (B, w7, H/2, W/2)
        enc6 = F.relu(self.enc6_norm(self.enc6(torch.cat([h7, enc0], 1))))  # (B, w7 + w1, H, W)
        kernels = self.kernels(h5.flatten(1) if cfg.transform == "cdna" else enc6)
        next_state = self.state_head(sa) if state is not None else None
        return kernels, self.masks(enc6), next_state

    # --- move the source (frame channels + pixel channels) and composite the candidates

    def _transform(self, source, skip_source, kernels, mask_logits):
        cfg = self.config
        k = cfg.transform_kernel
        B = len(kernels)
        source, skip_source = _batch(source, B), _batch(skip_source, B)
        with torch.autocast(source.device.type, enabled=False):  # float32: keeps pixel mass exact
            masks = torch.softmax(mask_logits.float(), 1)  # (B, M, H, W): M = 1 + moved + skip candidates
            n = cfg.num_kernels if cfg.transform == "cdna" else 1
            if cfg.transform == "cdna":
                kern = kernels.float().view(B, n, k * k)
                kern = transforms.normalize_kernels(kern, 2, cfg.kernel_norm).view(B, n, k, k)
                out = transforms.cdna_composite(source, kern, masks[:, :1 + n])
            else:
                kern = transforms.normalize_kernels(kernels.float(), 1, cfg.kernel_norm)  # (B, k*k, H, W)
                out = source * masks[:, :1] + transforms.dna_transform(source, kern) * masks[:, 1:2]
            return out + skip_source * masks[:, 1 + n:2 + n] if cfg.skip else out  # (B, Ch, H, W)

    def forward(self, frames, actions, states=None, pixels=None, num_context: int = 2,
                sample_prob: float = 0.0, generator: torch.Generator | None = None,
                shared_context: bool = False) -> VideoPrediction:
        """Roll the model out for T = actions.shape[1] steps.

        frames   (B, T0, C, H, W) float in [0, 1], num_context <= T0 <= T + 1: ground truth; frames past
                 the context are used only for scheduled sampling.
        actions  (B, T, A): action t takes frame t to frame t + 1.
        states   (B, T0s, S), num_context <= T0s <= T + 1: required iff config.state_dim > 0.
        pixels   (B, K, H, W): designated-pixel distributions at frame num_context - 1 (each sums to 1).
        At step t the input frame (and state) is ground truth if t < num_context, else the model's own
        previous prediction, except that with sample_prob each sequence independently gets ground
        truth (where there is one) at that step: Finn's scheduled sampling, redrawn every step.
        shared_context: every sequence has the same context (frames, states and pixels up to num_context,
        the first num_context - 1 actions), as in a planner's batch: the context steps then run once, at
        batch 1, and the last one's encoder too (the same predictions, a ninth less work at 1 + 8 actions).
        """
        cfg = self.config
        B, T, T0 = self._check_inputs(frames, actions, states, pixels, num_context, sample_prob)
        if shared_context:
            if sample_prob > 0:
                raise ForesightError("shared_context: scheduled sampling (sample_prob > 0) gives each sequence "
                                     "its own frames; pass shared_context=False")
            _check_shared(frames, actions, states, pixels, num_context)
            frames, states = frames[:1, :num_context], None if states is None else states[:1, :num_context]
            pixels = None if pixels is None else pixels[:1]
        n = len(self.action_half)  # scaled to -1..1: the first n entries are the environment's (a latent may follow)
        if n:
            actions = torch.cat([(actions[..., :n].float() - self.action_centre) / self.action_half,
                                 actions[..., n:].float()], -1)
        C = cfg.channels
        lstm = [None] * 7
        out_frames, out_states, out_pixels = [], [], []
        frame = state = dist = None
        skip_frame = frames[:, 0].float()  # SNA's skip candidate: the first context frame ...
        skip_both = None if pixels is None else torch.cat([skip_frame, pixels.float()], 1)  # ... and the given pixels
        for t in range(T):
            if t < num_context:
                frame = frames[:, t].float()
                state = states[:, t].float() if states is not None else None
            elif sample_prob > 0:  # scheduled sampling: some sequences see ground truth
                draw = torch.rand(B, generator=generator,
                                  device=generator.device if generator is not None else frames.device)
                use_truth = draw.to(frames.device) < sample_prob
                if t < T0:
                    frame = torch.where(use_truth[:, None, None, None], frames[:, t].float(), frame)
                if states is not None and t < states.shape[1]:
                    state = torch.where(use_truth[:, None], states[:, t].float(), state)
            action = actions[:1 if shared_context and t < num_context - 1 else B, t].float()
            kernels, mask_logits, next_state = self._network(frame, action, state, lstm)

            tracking = pixels is not None and t >= num_context - 1
            if tracking:  # designated pixels ride along as extra channels
                dist = pixels.float() if t == num_context - 1 else dist
                moved = self._transform(torch.cat([frame, dist], 1), skip_both, kernels, mask_logits)
            else:
                moved = self._transform(frame, skip_frame, kernels, mask_logits)
            frame = moved[:, :C]
            out_frames.append(_batch(frame, B))
            if tracking:
                dist = moved[:, C:]
                mass = dist.sum((2, 3), keepdim=True)
                dist = dist / mass.clamp_min(torch.finfo(dist.dtype).tiny)  # renormalise: see module doc
                out_pixels.append(dist)
            if next_state is not None:
                state = next_state.float()
                out_states.append(_batch(state, B))

        return VideoPrediction(
            frames=torch.stack(out_frames, 1),
            states=torch.stack(out_states, 1) if out_states else None,
            pixels=torch.stack(out_pixels, 1) if out_pixels else None,
        )

    def loss(self, frames, actions, states=None, num_context: int = 2, sample_prob: float = 0.0,
             generator: torch.Generator | None = None, points=None, track_weight: float = 0.0,
             image_loss: str = "mse") -> dict[str, torch.Tensor]:
        """Finn's training loss on a sequence of T + 1 frames: mean squared error of the predictions of
        frames num_context..T (the earlier ones are teacher-forced), plus 1e-4 x the state error.
        image_loss "l1" uses the mean absolute error instead: where the future is uncertain it is
        minimised by the median rather than the mean, so it penalises a smeared object more.

        frames (B, T + 1, C, H, W), actions (B, T, A), states (B, T + 1, S) iff state_dim > 0.
        points (B, T + 1, K, 2) with track_weight > 0: the objects' true pixels (the dataset's ground
        truth) supervise the designated-pixel flow: a distribution started at each object's pixel in
        frame num_context - 1 is carried by the model, and track_weight x its expected distance (pixels)
        to the true pixel is added. Without it the pixel flow is learnt only through the images, and a
        planner finds plans in which a block's probability mass rides away on the pusher.
        Returns {"loss": to minimise, "image_mse": ..., ["image_l1": ...], ["state_mse": ...], ["track_px": ...]}.
        """
        if image_loss not in ("mse", "l1"):
            raise ForesightError(f"image_loss: expected 'mse' or 'l1', got {image_loss!r}")
        tracking = points is not None and track_weight > 0
        pixels = None
        if tracking:  # an object out of view at the start (not in the scene) has nothing to track
            pixels = delta_distribution(points[:, num_context - 1].float(), *self.config.image_size)
        pred = self(frames, actions, states, pixels=pixels, num_context=num_context, sample_prob=sample_prob,
                    generator=generator)  # checks the shapes
        T = actions.shape[1]
        if frames.shape[1] != T + 1:
            raise ForesightError(f"frames: expected (B, T + 1, C, H, W) with T + 1 = {T + 1} "
                                 f"(one more than actions), got {tuple(frames.shape)}")
        predicted, truth = pred.frames[:, num_context - 1:], frames[:, num_context:].float()
        image_mse = F.mse_loss(predicted, truth)
        terms = {"loss": image_mse, "image_mse": image_mse}
        if image_loss == "l1":
            terms["loss"] = terms["image_l1"] = F.l1_loss(predicted, truth)
        if pred.states is not None:
            if states.shape[1] != T + 1:
                raise ForesightError(f"states: expected (B, T + 1, S) with T + 1 = {T + 1}, "
                                     f"got {tuple(states.shape)}")
            state_mse = F.mse_loss(pred.states[:, num_context - 1:], states[:, num_context:].float())
            terms["state_mse"] = state_mse
            terms["loss"] = terms["loss"] + STATE_LOSS_WEIGHT * state_mse
        if tracking:
            d = expected_distance(pred.pixels, points[:, num_context:].float())  # (B, T + 1 - nc, K)
            seen = in_image(points[:, num_context - 1:num_context], *self.config.image_size).expand_as(d)
            track_px = d.mean() if seen.all() else d[seen].sum() / seen.sum().clamp_min(1)
            terms["track_px"] = track_px
            terms["loss"] = terms["loss"] + track_weight * track_px
        return terms

    # --- input checks: one clear error per mistake

    def _check_inputs(self, frames, actions, states, pixels, num_context, sample_prob):
        cfg = self.config
        C, (H, W), A, S = cfg.channels, cfg.image_size, cfg.action_dim, cfg.state_dim
        if not (isinstance(num_context, int) and num_context >= 1):
            raise ForesightError(f"num_context: expected an int >= 1, got {num_context!r}")
        if not (0.0 <= sample_prob <= 1.0):
            raise ForesightError(f"sample_prob: expected a probability in [0, 1], got {sample_prob!r}")
        if not (torch.is_tensor(actions) and actions.dim() == 3 and actions.shape[2] == A):
            raise ForesightError(f"actions: expected shape (B, T, {A}) (action_dim={A}), "
                                 f"got {_shape(actions)}")
        B, T = actions.shape[:2]
        if T < num_context:
            raise ForesightError(f"actions: expected T >= num_context={num_context} steps, got {_shape(actions)}")
        if not (torch.is_tensor(frames) and frames.dim() == 5):
            raise ForesightError(f"frames: expected shape (B, T0, {C}, {H}, {W}), got {_shape(frames)}")
        if not frames.is_floating_point():
            raise ForesightError(f"frames: expected float in [0, 1], got dtype {frames.dtype} "
                                 "(convert uint8 with frames.float() / 255)")
        if frames.shape[0] != B:
            raise ForesightError(f"frames: batch {frames.shape[0]} differs from actions' batch {B}")
        if tuple(frames.shape[2:]) != (C, H, W):
            raise ForesightError(f"frames: expected (channels, height, width) = {(C, H, W)} from the config, "
                                 f"got {tuple(frames.shape[2:])} in {_shape(frames)}")
        T0 = frames.shape[1]
        if not num_context <= T0 <= T + 1:
            raise ForesightError(f"frames: expected num_context={num_context} <= T0 <= T + 1 = {T + 1} "
                                 f"frames, got {_shape(frames)}")
        if S == 0 and states is not None:
            raise ForesightError("states: this model has state_dim=0; pass states=None")
        if S > 0:
            if not (torch.is_tensor(states) and states.dim() == 3 and states.shape[0] == B
                    and states.shape[2] == S and num_context <= states.shape[1] <= T + 1):
                raise ForesightError(f"states: expected shape ({B}, T0s, {S}) with num_context={num_context} "
                                     f"<= T0s <= {T + 1} (state_dim={S}), got {_shape(states)}")
        if pixels is not None:
            if not (torch.is_tensor(pixels) and pixels.dim() == 4 and pixels.shape[0] == B
                    and tuple(pixels.shape[2:]) == (H, W)):
                raise ForesightError(f"pixels: expected shape ({B}, K, {H}, {W}), got {_shape(pixels)}")
            mass = pixels.float().sum((2, 3))
            if not torch.allclose(mass, torch.ones_like(mass), atol=1e-3) or bool((pixels < 0).any()):
                raise ForesightError("pixels: expected non-negative distributions, each summing to 1 "
                                     f"over (H, W); got masses {mass.flatten()[:4].tolist()}...")
        return B, T, T0


def _shape(x):
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__


def _batch(x: torch.Tensor, B: int) -> torch.Tensor:
    """A batch-1 tensor (a shared context's) broadcast to batch B, in channels-last where it is an image."""
    if len(x) == B:
        return x
    x = x.expand(B, *x.shape[1:])
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _check_shared(frames, actions, states, pixels, num_context):
    for name, x in (("frames", frames[:, :num_context]), ("actions", actions[:, :num_context - 1]),
                    ("states", None if states is None else states[:, :num_context]), ("pixels", pixels)):
        if x is not None and not bool((x == x[:1]).all()):
            raise ForesightError(f"{name}: shared_context=True expects the same context in every sequence "
                                 f"of the batch; sequence {int((x != x[:1]).flatten(1).any(1).nonzero()[0])} differs")


# -----------------------------------------------------------------------------
# a helper for training loops


def scheduled_sampling_prob(step: int, k: float = 900.0) -> float:
    """Finn's inverse-sigmoid schedule: the fraction of the batch fed ground truth at training step
    `step` (1.0 at the start, 0.5 near step k * ln k, ~0 after); pass it as sample_prob."""
    return k / (k + math.exp(min(step / k, 700.0)))
