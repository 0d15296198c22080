"""Distribution distances (FID / FVD style) and identity similarity (CSIM) in a stated feature space.

- ``frechet_distance``: the Fréchet distance between Gaussian fits of two feature sets
  (Heusel et al. 2017, Eq. 6): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
- Frame level (FID style): one feature per frame. Clip level (FVD style, Unterthiner et al. 2019,
  who use I3D features): one feature per clip from ``clip_features``.
- The default feature space is dlib's 128-d face descriptor (``fid_dlib128``, ``fvd_dlib128``);
  with fewer samples than dimensions the covariances are rank-deficient and the distance is
  biased upwards: compare rows of the same run, never with published FID / FVD.
"""

from __future__ import annotations

import numpy as np

from talk.evaluation.metrics import few_threads


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of samples (N, D), float64; one sample -> zero covariance."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected (N, D) features with N >= 1, got {x.shape}")
    mu = x.mean(0)
    cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    return mu, np.atleast_2d(cov)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of feature sets a (N, D) and b (M, D).

    Tr((S_a S_b)^(1/2)) is computed as Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), which has the same
    eigenvalues and stays symmetric, so no complex square roots arise (eigenvalues clipped at 0).
    """
    import torch

    mu_a, s_a = gaussian_fit(a)
    mu_b, s_b = gaussian_fit(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
    with few_threads():
        sa, sb = torch.from_numpy(s_a), torch.from_numpy(s_b)  # (D, D) float64
        w, v = torch.linalg.eigh((sa + sa.T) / 2)
        root_a = (v * w.clamp(min=0).sqrt()) @ v.T  # S_a^(1/2)
        m = root_a @ sb @ root_a
        tr_cross = float(torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum())
    d = float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross)
    return max(d, 0.0)


def clip_features(frame_features: np.ndarray) -> np.ndarray:
    """One clip-level feature (2D,) from per-frame features (T, D): their mean, and the RMS of
    their frame-to-frame differences (how the features move; zero for a frozen clip)."""
    f = np.asarray(frame_features, np.float64)
    f = f[~np.isnan(f).any(1)]
    if len(f) == 0:
        raise ValueError("no frame features")
    motion = np.sqrt(np.mean(np.diff(f, axis=0) ** 2, axis=0)) if len(f) > 1 else np.zeros(f.shape[1])
    return np.concatenate([f.mean(0), motion])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows of a (N, D) with b (D,) or (N, D) -> (N,)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def csim(frame_features: np.ndarray, reference: np.ndarray) -> float:
    """CSIM: mean cosine similarity between generated frames' identity features (T, D) (NaN rows
    skipped) and the reference frame's (D,)."""
    f = np.asarray(frame_features)
    f = f[~np.isnan(f).any(1)]
    if len(f) == 0:
        return float("nan")
    return float(cosine(f, reference).mean())
