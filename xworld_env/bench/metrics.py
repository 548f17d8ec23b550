"""Image fidelity metrics: PSNR and SSIM, and the stitched seven-view image they are taken on.

Images are ``(..., H, W, 3)``: uint8 (peak 255) or float (peak 1). Both arguments of a metric
must have the same shape and kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from xworld_env.types import CAMERA_NAMES

#: SSIM constants of Wang et al. (2004), relative to the peak value.
SSIM_K1, SSIM_K2 = 0.01, 0.03


def peak_value(a: np.ndarray | torch.Tensor) -> float:
    """255 for uint8 images, 1 for float images."""
    dtype = a.dtype
    if dtype in (np.uint8, torch.uint8):
        return 255.0
    floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else (
        np.issubdtype(dtype, np.floating))
    if floating:
        return 1.0
    raise TypeError(f"images must be uint8 or float, got {dtype}")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray, float]:
    peak = peak_value(a)
    if peak_value(b) != peak:
        raise TypeError(f"both images must be uint8 or both float, got {a.dtype} and {b.dtype}")
    a, b = _numpy(a), _numpy(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    return a.astype(np.float64), b.astype(np.float64), peak


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def psnr_from_mse(mse: float | np.ndarray, peak: float) -> float | np.ndarray:
    """PSNR in dB of a mean squared error; ``inf`` where the error is 0."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.where(mse > 0, 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-300)), np.inf)
    return float(out) if out.ndim == 0 else out


def mse_per_frame(a, b) -> np.ndarray:
    """Mean squared error of each image along the leading axis: (N, ...) -> (N,)."""
    a, b, _ = _pair(a, b)
    if a.ndim < 1:
        raise ValueError("mse_per_frame needs a leading frame axis")
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def psnr(a, b) -> float:
    """PSNR in dB over all pixels of ``a`` and ``b``; ``inf`` when they are identical."""
    a, b, peak = _pair(a, b)
    return psnr_from_mse(float(((a - b) ** 2).mean()), peak)


def psnr_per_frame(a, b) -> np.ndarray:
    """PSNR in dB of each image along the leading axis: (N, ...) -> (N,), ``inf`` if identical."""
    return np.asarray(psnr_from_mse(mse_per_frame(a, b), peak_value(a)), dtype=np.float64)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the 2-D window is its outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    a, b, window: int = 11, sigma: float = 1.5, device: torch.device | str | None = None
) -> torch.Tensor:
    """SSIM of every valid window position, per channel: (..., H, W, C) -> (N, C, H', W').

    Leading axes are flattened into ``N`` images; windows lie fully inside the image (no
    padding), as in Wang et al. (2004). Computed in float64 (on ``device``, default CPU): in
    float32 the variance cancellation costs about 1e-4 of SSIM, the size of the effects measured.
    """
    a, b, peak = _pair(a, b)
    *_, h, w, c = a.shape
    if min(h, w) < window:
        raise ValueError(f"images of {h}x{w} are smaller than the {window}x{window} SSIM window")
    x = torch.from_numpy(a.reshape(-1, h, w, c) / peak).to(device).permute(0, 3, 1, 2)
    y = torch.from_numpy(b.reshape(-1, h, w, c) / peak).to(device).permute(0, 3, 1, 2)
    g = gaussian_window(window, sigma).to(x.device)
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = maps.shape[1]
    # The Gaussian window is separable: a row pass then a column pass.
    maps = F.conv2d(maps, g.view(1, 1, 1, window).expand(k, 1, 1, window), groups=k)
    maps = F.conv2d(maps, g.view(1, 1, window, 1).expand(k, 1, window, 1), groups=k)
    mu_x, mu_y, xx, yy, xy = maps.split(c, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def ssim(
    a, b, window: int = 11, sigma: float = 1.5, device: torch.device | str | None = None
) -> float:
    """Mean SSIM over window positions, channels and images (Gaussian window, σ = 1.5).

    Args:
        a, b: images (..., H, W, 3), uint8 or float in [0, 1]; leading axes are images.
        window: side of the Gaussian window (11, or 7 for small images).
        sigma: its standard deviation.
        device: where to compute (default CPU).

    Returns:
        1.0 for identical images; lower means less similar.
    """
    return float(ssim_map(a, b, window, sigma, device).mean())


def ssim_per_frame(
    a, b, window: int = 11, sigma: float = 1.5, device: torch.device | str | None = None
) -> np.ndarray:
    """Mean SSIM of each entry of the leading axis: (N, ..., H, W, 3) -> (N,)."""
    n = len(a)
    values = ssim_map(a, b, window, sigma, device)
    return values.reshape(n, -1).mean(dim=1).cpu().numpy()


def stitch(views):
    """Places the cameras side by side: (..., V, H, W, 3) -> (..., H, V * W, 3)."""
    if views.ndim < 4:
        raise ValueError(f"views must be (..., V, H, W, 3), got shape {tuple(views.shape)}")
    *lead, v, h, w, c = views.shape
    order = (*range(len(lead)), len(lead) + 1, len(lead), len(lead) + 2, len(lead) + 3)
    if isinstance(views, torch.Tensor):
        return views.permute(order).reshape(*lead, h, v * w, c)
    return np.ascontiguousarray(np.transpose(views, order)).reshape(*lead, h, v * w, c)


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries; ``inf`` when every entry is ``inf`` (identical frames)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size:
        return float(finite.mean())
    return math.inf if values.size else math.nan


def frame_motion(frames: np.ndarray, starts: Iterable[int] = (), first: int = 0) -> float:
    """How much a video moves: the mean absolute change between consecutive frames.

    Args:
        frames: (T, ...) images in time order (uint8 or float; the result is in their units,
            pixel levels 0-255 for uint8).
        starts: indices ``t`` where a new episode begins: the pair ``t - 1, t`` is a jump to a
            new start, not motion, and is left out.
        first: the first frame taken; the frames before it (and starts at or before it) are
            left out, e.g. the first half of a drive.

    Returns:
        ``mean |frames[t] - frames[t - 1]|`` over every pixel of every consecutive pair kept;
        nan when no pair is kept.
    """
    frames = _numpy(frames)[first:]
    starts = [t - first for t in starts]
    if len(frames) < 2:
        return math.nan
    change = np.abs(np.diff(frames.astype(np.float32), axis=0))
    kept = np.ones(len(change), dtype=bool)
    kept[[t - 1 for t in starts if 1 <= t < len(frames)]] = False
    return float(change[kept].mean()) if kept.any() else math.nan


def observed_views(obs: dict) -> np.ndarray:
    """The camera views of an env observation, stacked in ``CAMERA_NAMES`` order (v, H, W, 3)."""
    return np.stack([obs[name] for name in CAMERA_NAMES])
