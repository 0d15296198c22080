"""Pixel metrics on aligned crops: PSNR and SSIM (Wang, Bovik, Sheikh, Simoncelli 2004).

SSIM follows the paper's reference settings: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, L = 255, statistics over the 'valid' region only (no padding), the mean of the SSIM
map per colour channel, then the mean over R, G, B (as scikit-image's ``channel_axis`` does).
"""

from __future__ import annotations

import cv2
import numpy as np

PSNR_CAP = 100.0  # dB reported for identical frames (MSE = 0), so JSON never holds infinity
SSIM_WINDOW = 11  # px, side of the Gaussian window
SSIM_SIGMA = 1.5  # px
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def _check_pair(gen: np.ndarray, real: np.ndarray) -> None:
    if gen.shape != real.shape:
        raise ValueError(f"generated {gen.shape} and real {real.shape} frames differ in shape")
    if gen.ndim != 4 or gen.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {gen.shape}")


def psnr(gen: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB, (T,), capped at ``PSNR_CAP`` for identical frames."""
    _check_pair(gen, real)
    diff = gen.astype(np.float64) - real.astype(np.float64)  # (T, H, W, 3)
    mse = np.mean(diff * diff, axis=(1, 2, 3))  # (T,)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return np.minimum(out, PSNR_CAP)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian (size,); the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of a 2-D float64 image, keeping only the 'valid' region."""
    r = len(g) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return out[r : img.shape[0] - r, r : img.shape[1] - r]


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map of two 2-D images (H, W) -> (H - 10, W - 10), Eq. 13 of the paper."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {x.shape}")
    g = gaussian_window()
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return num / den


def ssim(gen: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-frame SSIM, (T,): mean SSIM map per channel, averaged over the 3 channels."""
    _check_pair(gen, real)
    out = np.empty(len(gen))
    for t in range(len(gen)):
        out[t] = np.mean([ssim_map(gen[t, :, :, c], real[t, :, :, c]).mean() for c in range(3)])
    return out
