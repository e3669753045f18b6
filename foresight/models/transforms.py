"""The moves of CDNA and DNA (Finn et al. 2016): a frame transformed by normalised kernels. All float32; the video
model switches autocast off around them (``models/video.py``).

Kernel convention: tap (i, j) of a k x k kernel (r = k // 2) reads source pixel (row + i - r, col + j - r), as
F.conv2d does. A kernel whose mass sits at tap (r, r - 1) therefore moves content one pixel to the right.
"""
import math

import torch
import torch.nn.functional as F

RELU_SHIFT = 1e-12  # Finn: relu(x - shift) + shift keeps every tap > 0, so a kernel never sums to 0


def normalize_kernels(logits: torch.Tensor, dim: int, kind: str) -> torch.Tensor:
    """Make the taps along `dim` non-negative and sum to 1."""
    if kind == "softmax":
        # along the innermost axis in memory: 2-3x faster than a strided softmax over a channels-last dim
        return torch.softmax(logits.movedim(dim, -1), -1).movedim(-1, dim)
    k = F.relu(logits - RELU_SHIFT) + RELU_SHIFT
    return k / k.sum(dim, keepdim=True)


def cdna_transform(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """images (B, Ch, H, W), kernels (B, N, k, k) -> (B, N, Ch, H, W); zero padding, k odd.

    Kernel n of sample b filters every channel of image b. Finn's trick: put the batch on the channel
    axis and run one grouped convolution with a group per sample; here each (sample, kernel) pair gets
    its own copy of the image, which makes it a depthwise convolution: 2.2x faster on CPU at 32x32.
    Its gradients are two more convolutions (``_CDNATransform``): autograd's own depthwise backward
    with 9x9 kernels took 10x the forward and most of a training step on CPU.
    """
    return _CDNATransform.apply(images, kernels)


def _cdna_forward(images, kernels):
    B, Ch, H, W = images.shape
    N, k = kernels.shape[1], kernels.shape[-1]
    x = images.transpose(0, 1)[:, :, None].expand(Ch, B, N, H, W).reshape(Ch, B * N, H, W)  # channels play batch
    y = F.conv2d(x, kernels.reshape(B * N, 1, k, k), padding=k // 2, groups=B * N)  # (Ch, B*N, H, W)
    return y.reshape(Ch, B, N, H, W).permute(1, 2, 0, 3, 4)


class _CDNATransform(torch.autograd.Function):
    """y[b,n,c] = x[b,c] (cross-correlated with) w[b,n]. Backward, with g = dL/dy:
    dL/dx[b,c] = sum_n g[b,n,c] (correlated with) flip(w[b,n])   (a depthwise convolution, summed over n)
    dL/dw[b,n] = sum_c pad(x[b,c]) (correlated with) g[b,n,c]    (a convolution with B groups whose
                                                                   "kernels" are the H x W gradients)"""

    @staticmethod
    def forward(ctx, images, kernels):
        ctx.save_for_backward(images, kernels)
        return _cdna_forward(images, kernels)

    @staticmethod
    def backward(ctx, g):  # g (B, N, Ch, H, W)
        images, kernels = ctx.saved_tensors
        B, Ch, H, W = images.shape
        N, k = kernels.shape[1], kernels.shape[-1]
        r = k // 2
        grad_images = grad_kernels = None
        if ctx.needs_input_grad[0]:
            gg = g.permute(2, 0, 1, 3, 4).reshape(Ch, B * N, H, W)
            flipped = kernels.flip(-1, -2).reshape(B * N, 1, k, k)
            gx = F.conv2d(gg, flipped, padding=r, groups=B * N)  # (Ch, B*N, H, W)
            grad_images = gx.view(Ch, B, N, H, W).sum(2).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            padded = F.pad(images, (r, r, r, r)).reshape(1, B * Ch, H + 2 * r, W + 2 * r)
            gw = F.conv2d(padded, g.reshape(B * N, Ch, H, W), groups=B)  # (1, B*N, k, k)
            grad_kernels = gw.view(B, N, k, k)
        return grad_images, grad_kernels


def dna_transform(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """images (B, Ch, H, W), kernels (B, k*k, H, W) -> (B, Ch, H, W); zero padding.

    out[b, c, y, x] = sum_ij kernels[b, i*k + j, y, x] * images[b, c, y + i - r, x + j - r]:
    a sum of k*k shifted copies (a loop over taps, never over pixels; no k*k-fold unfold in memory).
    """
    H, W = images.shape[-2:]
    k = math.isqrt(kernels.shape[1])
    r = k // 2
    # plain NCHW for both: each tap is then one contiguous multiply-add over (B, Ch, H, W)
    padded = F.pad(images.contiguous(), (r, r, r, r))
    kernels = kernels.contiguous()
    out = kernels[:, 0, None] * padded[:, :, :H, :W]
    for t in range(1, k * k):  # in place: autograd needs the taps and the shifted copies, never `out` itself
        i, j = divmod(t, k)
        out.addcmul_(kernels[:, t, None], padded[:, :, i:i + H, j:j + W])
    return out


def cdna_composite(images: torch.Tensor, kernels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """images (B, Ch, H, W), kernels (B, N, k, k) with taps summing to 1, masks (B, 1 + N, H, W) ->
    masks[:, 0] * images + sum_n masks[:, 1 + n] * cdna_transform(images, kernels)[:, n], (B, Ch, H, W).

    With gradients (training): the N moved copies, whose backward is ``cdna_transform``'s hand-written one.
    Without (planning): the same sum as one kernel per pixel (``cdna_composite_per_pixel``), several times faster
    there (``benchmarks/speed.py``) but slower through autograd's backward.
    """
    if torch.is_grad_enabled():
        return cdna_composite_moved(images, kernels, masks)
    return cdna_composite_per_pixel(images, kernels, masks)


def cdna_composite_moved(images, kernels, masks):
    """``cdna_composite`` over N moved copies, summed part by part (never concatenated with the image into a
    (B, 1 + N, Ch, H, W) tensor: a costly copy)."""
    return images * masks[:, :1] + (cdna_transform(images, kernels) * masks[:, 1:, None]).sum(1)


def cdna_composite_per_pixel(images, kernels, masks):
    """``cdna_composite`` as one DNA transform: the composite is linear in the kernels, so its kernel at pixel
    (y, x) is K[b, :, y, x] = sum_n masks[b, 1 + n, y, x] kernels[b, n] (+ masks[b, 0, y, x] at the centre tap,
    the unmoved image). No moved copies of the image."""
    B, N, k, _ = kernels.shape
    H, W = images.shape[-2:]
    K = torch.matmul(kernels.reshape(B, N, k * k).transpose(1, 2), masks[:, 1:].reshape(B, N, H * W))
    K = K.view(B, k * k, H, W)
    K[:, k * k // 2] += masks[:, 0]
    return dna_transform(images, K)
