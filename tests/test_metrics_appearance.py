"""evaluate's identity, appearance, pause and round-trip metrics on inputs whose answer is known."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from eval_fixture import face_image

from talk.evaluation.metrics import appearance, identity, sync
from talk.evaluation.metrics.face import FaceAnalyzer


@pytest.fixture(scope="module")
def face():
    """A real face crop (128 px), its landmarks and face mask."""
    img = face_image("a")
    fa = FaceAnalyzer(descriptors=False)
    lm = fa.landmarks(img, fa.detect(img))
    return img, lm, appearance.face_masks(lm, *img.shape[:2])[0]


# --------------------------------------------------------------------------------------------
# CIELAB


def test_lab_known_values():
    rgb = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8)
    lab = appearance.rgb_to_lab(rgb)
    ref = np.array([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                    [32.30, 79.19, -107.86], [53.59, 0, 0]])  # CIELAB of the sRGB primaries (D65)
    assert np.allclose(lab, ref, atol=0.05)
    img = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)  # OpenCV interpolates its gamma curve
    cv = np.stack([cv2.cvtColor(f.astype(np.float32) / 255, cv2.COLOR_RGB2LAB) for f in img])
    assert np.abs(appearance.rgb_to_lab(img) - cv).max() < 0.3
    with pytest.raises(ValueError, match="uint8"):
        appearance.rgb_to_lab(img.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Face region, sharpness, colour


def test_face_mask_is_the_landmark_hull(face):
    img, lm, mask = face
    lo, hi = lm.min(0), lm.max(0)
    ys, xs = np.nonzero(mask)
    assert xs.min() >= lo[0] - 1 and xs.max() <= hi[0] + 1 and ys.min() >= lo[1] - 1 and ys.max() <= hi[1] + 1
    assert 0.15 < mask.mean() < 0.6  # the face fills a good part of the aligned crop, not all of it
    assert mask[int(lm[30, 1]), int(lm[30, 0])]  # the nose tip is inside


def test_identical_frames_score_perfectly(face):
    img, lm, mask = face
    frames = np.stack([img, img])
    masks = np.stack([mask, mask])
    assert np.allclose(appearance.sharpness_ratio(frames, masks, img, mask), 1.0)
    assert np.allclose(appearance.delta_e(frames, img, mask), 0.0)
    assert np.allclose(appearance.colour_shift(frames, masks, img, mask), 0.0, atol=1e-4)


def test_laplacian_variance_matches_opencv(face):
    img, lm, mask = face
    lap = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F, ksize=1)
    expect = lap[1:-1, 1:-1][mask[1:-1, 1:-1]].var()
    got = appearance.laplacian_variance(img[None], mask[None])[0]
    assert got == pytest.approx(expect, rel=0.02)  # OpenCV rounds the grey image to uint8 first
    assert math.isnan(appearance.laplacian_variance(img[None], np.zeros((1, *mask.shape), bool))[0])


def test_blur_lowers_the_sharpness_ratio(face):
    img, lm, mask = face
    ratios = [appearance.sharpness_ratio(cv2.GaussianBlur(img, (0, 0), s)[None], mask[None], img, mask)[0]
              for s in (0.6, 1.2, 2.4)]
    assert 1 > ratios[0] > ratios[1] > ratios[2] > 0
    assert ratios[1] < 0.5
    sharpened = cv2.addWeighted(img, 2.0, cv2.GaussianBlur(img, (0, 0), 1.5), -1.0, 0)
    assert appearance.sharpness_ratio(sharpened[None], mask[None], img, mask)[0] > 1.5


def test_hue_shift_and_sepia_raise_delta_e(face):
    img, lm, mask = face
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 30) % 180  # hue +60 degrees
    shifted = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    sepia = np.clip(img.astype(np.float32) @ np.array([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534],
                                                        [0.189, 0.168, 0.131]], np.float32), 0, 255).astype(np.uint8)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    de = appearance.delta_e(np.stack([shifted, sepia, noisy]), img, mask)
    shift = appearance.colour_shift(np.stack([shifted, sepia, noisy]), np.stack([mask] * 3), img, mask)
    assert de[0] > 10 and de[1] > 10 and de[2] < 3  # a colour change is far above pixel noise
    assert shift[0] > 10 and shift[1] > 10 and shift[2] < 0.5  # noise barely moves the mean colour
    both = appearance.face_colour(np.stack([shifted, sepia, noisy]), np.stack([mask] * 3), img, mask)
    assert np.allclose(both[0], de, atol=1e-4) and np.allclose(both[1], shift, atol=1e-4)  # the one-pass form agrees
    moved = np.roll(img, 3, axis=1)  # motion: ΔE per pixel sees it, the mean colour does not
    m2 = np.roll(mask, 3, axis=1)
    assert appearance.delta_e(moved[None], img, mask)[0] > 3
    assert appearance.colour_shift(moved[None], m2[None], img, mask)[0] < 1.0


# --------------------------------------------------------------------------------------------
# Identity


def test_identity_distance_and_drift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=128)
    d = np.stack([ref, ref + 0.1, ref]).copy()
    d[1] = np.nan
    dist = identity.distances(d, ref)
    assert dist[0] == 0 and np.isnan(dist[1]) and dist[2] == 0
    assert identity.distances(ref[None] + np.eye(128)[0] * 0.5, ref)[0] == pytest.approx(0.5)
    ramp = np.linspace(0, 1, 100)
    assert identity.drift(ramp, 25) == pytest.approx(ramp[75:].mean() - ramp[:25].mean())
    assert identity.drift(np.full(40, 0.3), 25) == pytest.approx(0.0)
    short = np.arange(10, dtype=float)  # shorter than two windows: halves, never overlapping
    assert identity.drift(short, 25) == pytest.approx(short[5:].mean() - short[:5].mean())
    gaps = np.full(50, np.nan)
    gaps[::5] = np.arange(10)
    assert identity.drift(gaps, 25) == pytest.approx(np.mean([5, 6, 7, 8, 9]) - np.mean([0, 1, 2, 3, 4]))
    assert math.isnan(identity.drift(np.full(50, np.nan), 25)) and math.isnan(identity.drift(np.ones(1), 25))


def test_identity_distance_on_real_faces():
    fa = FaceAnalyzer()
    a, b = face_image("a"), face_image("b")
    tr = fa.analyse(np.stack([a, cv2.GaussianBlur(a, (0, 0), 0.8), b]), descriptor_stride=1)
    dist = identity.distances(tr.descriptors, tr.descriptors[0])
    assert dist[0] == 0 and dist[1] < 0.25 and dist[2] > identity.SAME_PERSON


# --------------------------------------------------------------------------------------------
# Mouth closed in pauses


def test_pauses_find_silent_stretches():
    loud = np.full(40, -15.0)
    loud[10:20] = -60.0  # a 10-frame pause
    loud[30:32] = -60.0  # a 2-frame gap between syllables: not a pause
    p = sync.pauses(loud, pause_db=30.0, min_frames=5, trim=1)
    assert np.flatnonzero(p).tolist() == list(range(11, 19))
    assert sync.pauses(loud, 30.0, 2, 0)[30:32].all()
    s = sync.speech(loud, 30.0)
    assert not s[10:20].any() and not s[30:32].any() and s[:10].all()
    quiet_speech = loud.copy()  # quiet relative to the clip's own level, not an absolute one
    quiet_speech[loud > -60] = -40.0
    quiet_speech[10:20] = -75.0
    assert np.array_equal(sync.pauses(np.maximum(quiet_speech, -60), 15.0, 5, 1), p)
    assert not sync.pauses(np.full(30, -20.0), 30.0, 5, 1).any()
    assert sync.pauses(np.zeros(0), 30.0, 5, 1).shape == (0,)


def test_pauses_follow_real_audio_envelope():
    rng = np.random.default_rng(1)
    env = np.r_[np.ones(20), np.zeros(15), np.ones(20)]
    t = np.arange(len(env) * 640) / 16000
    audio = 0.3 * np.repeat(env, 640) * np.sin(2 * np.pi * 200 * t) + rng.normal(0, 1e-4, len(t))
    p = sync.pauses(sync.loudness(audio, len(env)), 30.0, 5, 1)
    assert np.flatnonzero(p).tolist() == list(range(21, 34))


# --------------------------------------------------------------------------------------------
# VAE round trip


def test_round_trip_is_memoised_and_keeps_the_shape(tmp_path):
    import torch

    from talk.artifacts.vae import save_vae
    from talk.evaluation.roundtrip import RoundTrip
    from talk.models.vae import VaeConfig, build_vae

    torch.manual_seed(0)
    save_vae(build_vae(VaeConfig(kind="kl", block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4), 32), tmp_path / "vae")
    assert RoundTrip.available(tmp_path / "vae") and not RoundTrip.available(tmp_path / "none")
    rt = RoundTrip(tmp_path / "vae")
    img = cv2.resize(face_image("a"), (32, 32), interpolation=cv2.INTER_AREA)
    out = rt(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert rt(img.copy()) is out  # the same reference is encoded once
    odd = cv2.resize(img, (30, 30))
    assert rt(odd).shape == odd.shape
    save_vae(build_vae(VaeConfig(patch_size=8, width=16, latent_channels=8, norm_num_groups=4), 32), tmp_path / "patch")
    assert RoundTrip(tmp_path / "patch")(odd).shape == odd.shape  # padded to whole 8 px blocks, cropped back
