"""The embedded profile's image VAE (models/patch_vae.py), its colour augmentation and the
fidelity figures fit_vae reports (talk/evaluation/metrics/fidelity.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talk.models.patch_vae import PatchAutoencoder, block_statistics


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: blurred colour noise (image-like spectra)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def tiny(**kw) -> PatchAutoencoder:
    torch.manual_seed(0)
    return PatchAutoencoder(**{"patch_size": 4, "latent_channels": 8, "width": 16, "refine_width": 8,
                               "norm_num_groups": 4, "sample_size": 32, **kw})


def test_shapes_gradients_and_identity_start():
    vae = tiny()
    x = smooth_images(3, 32, 0)
    post = vae.encode(x).latent_dist
    assert post.mean.shape == (3, 8, 8, 8) and post.std.shape == (3, 8, 8, 8)
    y = vae.decode(post.sample(generator=torch.Generator().manual_seed(0))).sample
    assert y.shape == x.shape
    y.abs().mean().backward()
    grads = [p.grad for p in vae.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the residual nets start at zero: encode / decode are the linear path alone
    vae.zero_grad()
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        assert torch.allclose(z, vae.encode_linear(torch.nn.functional.pixel_unshuffle(x, 4)), atol=1e-6)


def test_pca_start_reconstructs_and_whitens():
    """With C = d (every component kept) the PCA path is exact; with fewer it keeps most energy,
    and every latent channel has unit variance over the data it was fitted on."""
    x = smooth_images(8, 32, 1)
    full = tiny(latent_channels=48)  # d = 3 * 4 * 4
    full.fit_pca(*block_statistics(x, 4))
    with torch.no_grad():
        z = full.encode(x).latent_dist.mean
        assert torch.allclose(full.decode(z).sample, x, atol=1e-4)
        part = tiny(latent_channels=8)
        part.fit_pca(*block_statistics(x, 4))
        z = part.encode(x).latent_dist.mean
        err = (part.decode(z).sample - x).pow(2).mean() / x.var()
    assert err < 0.1
    np.testing.assert_allclose(z.transpose(0, 1).reshape(8, -1).var(1).numpy(), 1.0, rtol=0.05)


def test_save_load_round_trip(tmp_path):
    from talk.artifacts.vae import load_vae, save_vae, vae_factor

    vae = tiny()
    vae.fit_pca(*block_statistics(smooth_images(4, 32, 2), 4))
    vae.register_to_config(scaling_factor=0.7)
    save_vae(vae, tmp_path)
    loaded, scale, identity = load_vae(tmp_path)
    assert type(loaded).__name__ == "PatchAutoencoder" and scale == pytest.approx(0.7) and vae_factor(loaded) == 4
    x = smooth_images(2, 32, 3)
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x).latent_dist.mean).sample,
                           vae.decode(vae.encode(x).latent_dist.mean).sample)


def test_a_few_steps_lower_the_loss():
    from talk.models.vae import LossWeights, vae_loss

    vae = tiny()
    x = smooth_images(8, 32, 4)
    vae.fit_pca(*block_statistics(x, 4))
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    w = LossWeights(gradient=0.5, spectrum=0.1)
    losses = []
    for step in range(30):
        loss, _ = vae_loss(vae, x, w, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_colour_transform_spans_hues_and_keeps_grey():
    from talk.training.vae import colour_transform

    g = np.random.default_rng(0)
    red = np.array([0.8, -0.6, -0.6], np.float32)
    hues = []
    for _ in range(64):
        m, b = colour_transform(g)
        grey = m @ np.zeros(3, np.float32) + b
        assert np.ptp(grey) < 1e-5  # grey stays grey (brightness only)
        r, gg, bb = m @ red + b
        hues.append(np.arctan2(np.sqrt(3) * (gg - bb), 2 * r - gg - bb))
    assert np.ptp(hues) > 5.0  # the hue of a red goes all the way round


def test_short_fit_keeps_colours_the_training_faces_lack():
    """A round trip after a short fit on reddish training images keeps a saturated blue / green
    flag within a ΔE bound (the old KL-VAE turned such colours brown)."""
    from talk.evaluation.metrics.fidelity import fidelity
    from talk.models.vae import LossWeights, vae_loss
    from talk.training.vae import Patches

    g = np.random.default_rng(0)
    train = (smooth_images(16, 32, 5).permute(0, 2, 3, 1).numpy() * 0.3 + np.array([0.4, -0.1, -0.2])).clip(-1, 1)
    train = ((train + 1) * 127.5).round().astype(np.uint8)  # a narrow, skin-like palette
    patches = Patches(train, 16, True, seed=0, colour=1.0)
    vae = tiny()
    vae.fit_pca(*block_statistics(torch.stack([patches[i]["x"] for i in range(256)]), 4))
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for step in range(20):
        x = torch.stack([patches[step * 8 + i]["x"] for i in range(8)])
        loss, _ = vae_loss(vae, x, LossWeights(), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    flag = np.zeros((1, 32, 32, 3), np.uint8)
    flag[:, :16] = (20, 40, 220)
    flag[:, 16:] = (30, 200, 60)
    x = torch.from_numpy(flag).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert fidelity(rec, flag)["delta_e"][0] < 6.0


def test_fidelity_figures_on_known_answers():
    from talk.evaluation.metrics.fidelity import fidelity

    g = np.random.default_rng(0)
    img = g.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    f = fidelity(img, img)
    np.testing.assert_allclose(f["delta_e"], 0, atol=1e-6)
    np.testing.assert_allclose(f["sharpness"], 1, rtol=1e-6)
    blurred = ((img[:, :-1, :-1].astype(float) + img[:, 1:, 1:] + img[:, 1:, :-1] + img[:, :-1, 1:]) / 4).astype(np.uint8)
    assert (fidelity(blurred, img[:, :-1, :-1])["sharpness"] < 0.5).all()
    assert (fidelity(img[..., [1, 2, 0]], img)["delta_e"] > 20).all()  # a hue shift
