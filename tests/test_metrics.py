"""Metric library and judges of `evaluate`: known values, hand-checked cases, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_fixture import face_image as _face
from eval_fixture import open_mouth

from talk.core.errors import TalkError
from talk.evaluation import judges
from talk.evaluation.metrics import distribution, external, image, landmarks, sync
from talk.evaluation.metrics.face import FaceAnalyzer
from talk.media.landmarks import interocular


@pytest.fixture(scope="module")
def analyser():
    return FaceAnalyzer()


# --------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_known_values():
    real = np.zeros((2, 16, 16, 3), np.uint8)
    gen = real.copy()
    gen[1] += 1  # MSE 1 -> 10 log10(255^2)
    out = image.psnr(gen, real)
    assert out[0] == image.PSNR_CAP
    assert out[1] == pytest.approx(20 * math.log10(255), abs=1e-9)


def _ssim_bruteforce(x: np.ndarray, y: np.ndarray) -> float:
    """Direct window-by-window SSIM (Wang et al. 2004, Eq. 13) with the 11x11 Gaussian."""
    g = image.gaussian_window()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a = x[i:i + 11, j:j + 11].astype(np.float64)
            b = y[i:i + 11, j:j + 11].astype(np.float64)
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one_and_matches_bruteforce():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, 20, 22, 3), dtype=np.uint8)
    assert image.ssim(x, x)[0] == pytest.approx(1.0, abs=1e-12)
    y = np.clip(x.astype(int) + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)
    ref = np.mean([_ssim_bruteforce(y[0, :, :, c], x[0, :, :, c]) for c in range(3)])
    assert image.ssim(y, x)[0] == pytest.approx(ref, abs=1e-9)
    assert 0.5 < ref < 0.99  # a non-trivial case


def test_ssim_hand_checked_constant_images():
    # Constant images a, b: both variances and the covariance vanish, so the contrast-structure
    # term is C2 / C2 = 1 and SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere.
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert image.ssim(a, b)[0] == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1), abs=1e-12)


def test_ssim_falls_with_noise():
    x = _face("a")[None]
    rng = np.random.default_rng(1)
    scores = [image.ssim(np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8), x)[0] for s in (2, 10, 40)]
    assert scores[0] > scores[1] > scores[2]


# --------------------------------------------------------------------------------------------
# Fréchet distance, clip features, CSIM, LMD


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert distribution.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # shifted mean, same covariance: |d mu|^2
    assert distribution.frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=1e-8)
    # diagonal covariances: sum (sigma_a - sigma_b)^2 (+ mean term)
    b = rng.normal(size=(4000, 3)) * np.array([2.0, 0.5, 1.0]) + 3.0
    mu_a, s_a = distribution.gaussian_fit(a)
    mu_b, s_b = distribution.gaussian_fit(b)
    s_a, s_b = np.diag(np.diag(s_a)), np.diag(np.diag(s_b))  # the closed form below needs diagonal matrices
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(np.diag(s_a)) - np.sqrt(np.diag(s_b))) ** 2)
    got = distribution.frechet_distance(a, b)
    assert got == pytest.approx(expected, rel=0.02)  # off-diagonal sample covariance is ~0


def test_frechet_rank_deficient_and_single_sample():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 128))  # fewer samples than dimensions
    assert np.isfinite(distribution.frechet_distance(a, a + 0.1))
    one = rng.normal(size=(1, 4))
    assert distribution.frechet_distance(one, one) == pytest.approx(0.0, abs=1e-12)


def test_clip_features_and_csim():
    frozen = np.tile(np.arange(4.0), (6, 1))
    f = distribution.clip_features(frozen)
    assert f.shape == (8,) and np.all(f[4:] == 0) and np.allclose(f[:4], np.arange(4.0))
    moving = frozen + np.arange(6)[:, None]
    assert np.allclose(distribution.clip_features(moving)[4:], 1.0)
    ref = np.array([1.0, 0.0])
    feats = np.array([[2.0, 0.0], [0.0, 1.0], [np.nan, np.nan]])
    assert distribution.csim(feats, ref) == pytest.approx(0.5)


def test_lmd_known_shift():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 128, (3, 68, 2))
    gen = real + np.array([3.0, 4.0])  # every point 5 px away
    assert np.allclose(landmarks.f_lmd(gen, real, 128), 10.0)  # 5 px at 128 -> 10 px@256
    gen2 = real.copy()
    gen2[:, 48:68] += np.array([0.0, 2.0])
    assert np.allclose(landmarks.m_lmd(gen2, real, 256), 2.0)
    assert np.allclose(landmarks.f_lmd(gen2, real, 256), 2.0 * 20 / 68)


# --------------------------------------------------------------------------------------------
# Lip sync


def _toy_landmarks(gaps: np.ndarray) -> np.ndarray:
    lm = np.zeros((len(gaps), 68, 2))
    lm[:, 36:42] = [30.0, 40.0]
    lm[:, 42:48] = [70.0, 40.0]  # inter-ocular distance 40
    for up, lo in ((61, 67), (62, 66), (63, 65)):
        lm[:, up] = [50.0, 80.0]
        lm[:, lo, 0] = 50.0
        lm[:, lo, 1] = 80.0 + gaps
    return lm


def test_mouth_opening_and_loudness():
    lm = _toy_landmarks(np.array([0.0, 4.0, 8.0]))
    assert np.allclose(sync.mouth_opening(lm), [0.0, 0.1, 0.2])
    t = np.arange(3 * 640) / 16000
    audio = np.concatenate([np.zeros(640), 0.5 * np.sin(2 * np.pi * 400 * t[:1280])])
    loud = sync.loudness(audio, 3)
    assert loud[0] == sync.LOUDNESS_FLOOR_DB
    assert loud[1] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert len(sync.loudness(audio[:1000], 3)) == 3  # short audio is zero-padded


def test_lagged_correlation_finds_the_offset():
    rng = np.random.default_rng(0)
    loud = rng.normal(size=80)
    opening = np.roll(loud, 2)  # the mouth follows the sound 2 frames late
    curve = sync.lagged_correlation(opening, loud, 5)
    assert sync.best_offset(curve) == 2
    assert curve.max() == pytest.approx(1.0, abs=1e-9)
    assert np.all(sync.lagged_correlation(np.ones(80), loud, 5) == 0.0)  # a frozen mouth


# --------------------------------------------------------------------------------------------
# dlib face analysis on real faces


def test_face_analyser_on_real_faces(analyser):
    a, b = _face("a"), _face("b")
    track = analyser.analyse(np.stack([a, np.roll(a, 2, axis=1), b]), descriptor_stride=1)
    assert track.found.all()
    assert track.landmarks.shape == (3, 68, 2)
    l, t, r, bot = track.boxes[0]
    inside = (track.landmarks[0, :, 0] > l - 10) & (track.landmarks[0, :, 0] < r + 10)
    assert inside.all()
    assert np.allclose(track.landmarks[1, :, 0] - track.landmarks[0, :, 0], 2, atol=1.5)
    d = track.descriptors
    same = np.linalg.norm(d[0] - d[1])
    other = np.linalg.norm(d[0] - d[2])
    assert same < 0.3 < other  # dlib's same-person threshold is 0.6
    assert 25 < interocular(track.landmarks[:1])[0] < 40  # 4x IOD crops of 128 px


def test_face_analyser_no_face_uses_fallback(analyser):
    blank = np.full((2, 128, 128, 3), 128, np.uint8)
    fb = np.array([[30, 20, 100, 96]] * 2, np.float32)
    track = analyser.analyse(blank, descriptor_stride=0, fallback=fb)
    assert not track.found.any()
    assert np.array_equal(track.boxes, fb)
    assert np.isnan(track.descriptors).all()


def test_mouth_opening_follows_a_real_warp(analyser):
    a = _face("a")
    lm = analyser.landmarks(a, analyser.detect(a))
    gaps = np.array([0, 2, 4, 6, 8, 6, 3, 0])
    track = analyser.analyse(np.stack([open_mouth(a, lm, g) for g in gaps]), descriptor_stride=0)
    assert track.found.all()
    opening = sync.mouth_opening(track.landmarks)
    assert sync.pearson(opening, gaps) > 0.9
    assert opening[0] < 0.05 < opening[4]


# --------------------------------------------------------------------------------------------
# Judges


def test_normalised_landmarks_invariant_to_similarity(analyser):
    a = _face("a")
    lm = analyser.landmarks(a, analyser.detect(a))[None].astype(np.float64)
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = 1.7 * lm @ rot.T + np.array([12.0, -5.0])
    assert np.allclose(judges.normalised_landmarks(lm), judges.normalised_landmarks(moved), atol=1e-4)


def test_face_patch_and_features(analyser):
    a = _face("a")
    box = analyser.detect(a)
    patch = judges.face_patch(a, box, 64, 0.1)
    assert patch.shape == (64, 64) and patch.dtype == np.uint8 and patch.std() > 10
    edge = judges.face_patch(a, np.array([-40, -40, 40, 40], np.float32), 64, 0.0)
    assert edge[:16, :16].max() == 0  # outside the frame is black
    lm = analyser.landmarks(a, box)[None]
    x = judges.classifier_features(a[None], box[None], lm, 0.1)
    assert x.shape == (1, 1764 + 136) and np.isfinite(x).all()


def test_hog_orientation_bins():
    vertical = np.zeros((1, 64, 64))
    vertical[:, :, 32:] = 255  # horizontal gradient: 0 degrees, split between the bins at 10 and 170
    horizontal = np.zeros((1, 64, 64))
    horizontal[:, 32:, :] = 255  # vertical gradient: 90 degrees, the bin centred at 90
    fv = judges.hog(vertical).reshape(7, 7, 4, 9)
    fh = judges.hog(horizontal).reshape(7, 7, 4, 9)
    assert fv.shape == fh.shape and np.isclose(fv[3, 3, 0, 0], fv[3, 3, 0, 8]) and fv[3, 3, 0, 1:8].max() == 0
    assert fh[3, 3, 0].argmax() == 4 and np.count_nonzero(fh[3, 3, 0]) == 1
    assert np.all(judges.hog(np.full((1, 64, 64), 7.0)) == 0)  # flat patch: no gradient


def test_emotion_classifier_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (8, 20))
    y = np.repeat(np.arange(8), 30)
    x = centres[y] + rng.normal(0, 1, (len(y), 20))
    clf = judges.EmotionClassifier(l2=1e-4, max_iter=100).fit(x, y)
    p = clf.predict_proba(x)
    assert p.shape == (240, 8) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y).mean() > 0.95
    clf2 = judges.EmotionClassifier(l2=1e-4, max_iter=100).fit(x, y)
    assert np.allclose(clf2.predict_proba(x), p)
    assert set(clf.state()) == {"mean", "std", "weight", "bias"}
    # more steps lower the regularised loss (the fit converges)
    longer = judges.EmotionClassifier(l2=1e-4, max_iter=400).fit(x, y)
    assert longer.train_loss < clf.train_loss


def test_fer_judge_on_real_faces(analyser):
    a, b = _face("a"), _face("b")
    frames = np.stack([a, b])
    boxes = np.stack([analyser.detect(a), analyser.detect(b)])
    p = judges.FERJudge(margin=0.15).predict_proba(frames, boxes)
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-3)
    # Both portraits are neutral, closed-mouth faces: FER must not call them surprise.
    assert not np.any(p.argmax(1) == judges.FER_CLASSES.index("surprise"))


def test_label_maps():
    assert judges.fer_label("contempt") is None
    assert judges.FER_CLASSES[judges.fer_label("disgusted")] == "disgust"
    assert judges.FER_CLASSES[judges.fer_label("surprised")] == "surprise"
    m = judges.confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    assert m.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


# --------------------------------------------------------------------------------------------
# Optional paper metrics (weights supplied by the user; tested with random weights here)


def test_mfcc_matches_definition():
    rng = np.random.default_rng(0)
    sig = rng.normal(0, 1000, 16000)
    feat = external.mfcc(sig)
    assert feat.shape == (99, 13)  # 1 + ceil((16000 - 400) / 160) frames at 100 Hz
    # c0 is the log energy of the pre-emphasised first frame's power spectrum
    pre = np.append(sig[0], sig[1:] - 0.97 * sig[:-1])
    spec = np.abs(np.fft.rfft(pre[:400], 512)) ** 2 / 512
    assert feat[0, 0] == pytest.approx(np.log(spec.sum()), rel=1e-9)
    # the DCT is orthonormal
    basis = external._dct2_ortho(np.eye(26))
    assert np.allclose(basis @ basis.T, np.eye(26), atol=1e-12)
    fb = external.mel_filterbank()
    assert fb.shape == (26, 257) and fb.max() <= 1.0 and (fb.sum(1) > 0).all()


def test_syncnet_shapes_and_scores():
    from talk.models.syncnet import SyncNet, offset_distances, sync_scores

    net = SyncNet().eval()
    with torch.no_grad():
        assert net.forward_lip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 1024)
        assert net.forward_aud(torch.zeros(1, 1, 13, 20)).shape == (1, 1024)
    # distances with a clear minimum at offset index 12 of 2 * 15 + 1
    video = torch.randn(10, 4)
    audio = video.clone()
    d = offset_distances(video, audio, 15)
    assert d.shape == (10, 31) and torch.allclose(d[:, 15], torch.zeros(10), atol=1e-5)
    conf, dist, offset = sync_scores(d, 15)
    assert offset == 0 and dist == pytest.approx(0.0, abs=1e-5) and conf > 0


def test_syncnet_metric_loads_a_state_dict(tmp_path):
    from talk.models.syncnet import SyncNet

    torch.manual_seed(0)
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), path)
    metric = external.SyncNetMetric(path, batch=4)

    class Clip:
        audio = np.random.default_rng(0).normal(0, 0.1, 8 * 640).astype(np.float32)

    frames = np.random.default_rng(1).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)  # 3 windows of 5
    m = metric.clip_metrics(Clip, frames, frames[0], {})
    assert np.isfinite(m["sync_c"]) and m["sync_c"] >= 0 and m["sync_d"] > 0
    assert -15 <= m["syncnet_offset"] <= 15
    bad = tmp_path / "bad.model"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(TalkError, match="does not match"):
        external.SyncNetMetric(bad)
    with pytest.raises(TalkError, match="not found"):
        external.SyncNetMetric(tmp_path / "absent.model")


def test_inception_torchscript_plumbing(tmp_path):
    class Toy(torch.nn.Module):  # the detector interface: uint8 (N, 3, H, W), return_features
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = x.float().mean(dim=(2, 3))
            return f if return_features else f.sum(1)

    path = tmp_path / "toy.pt"
    torch.jit.script(Toy()).save(str(path))
    inc = external.InceptionFeatures(path, stride=1)
    frames = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    extra: dict = {}
    inc.clip_metrics(None, frames, frames[0], extra)
    assert extra["inception"].shape == (4, 3)
    out = inc.row_metrics("real", [extra], [extra], [])
    assert out["fid_inception"] == pytest.approx(0.0, abs=1e-9)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(TalkError, match="not a TorchScript"):
        external.InceptionFeatures(tmp_path / "junk.pt")


def test_arcface_csim_plumbing(tmp_path, monkeypatch):
    """insightface is optional and absent here: a stand-in FaceAnalysis checks our side of the
    interface (pack lookup, BGR input, largest face, normed embeddings, mean cosine)."""
    import sys
    import types

    with pytest.raises(TalkError, match="insightface pack 'buffalo_l' not found"):
        external.ArcFaceCSIM(tmp_path, "buffalo_l")
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "w600k_r50.onnx").write_bytes(b"stand-in")
    seen = {}

    class Face:
        def __init__(self, bbox, emb):
            self.bbox = np.array(bbox, np.float32)
            self.normed_embedding = np.array(emb, np.float32)

    class FaceAnalysis:
        def __init__(self, name, root, allowed_modules, providers):
            seen.update(name=name, root=root)

        def prepare(self, ctx_id, det_size):
            seen["ctx_id"] = ctx_id

        def get(self, bgr):
            seen["first_pixel"] = bgr[0, 0].tolist()
            if bgr.mean() == 0:
                return []
            tilt = float(bgr[0, 0, 0] > 0)  # blue channel first: frames whose red pixel is set stay untilted
            return [Face([0, 0, 5, 5], [0, 1]), Face([0, 0, 50, 50], [np.sqrt(1 - tilt * 0.36), tilt * 0.6])]

    fake = types.ModuleType("insightface.app")
    fake.FaceAnalysis = FaceAnalysis
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.app", fake)
    arc = external.ArcFaceCSIM(tmp_path, "buffalo_l", stride=1)
    assert seen["name"] == "buffalo_l" and seen["root"] == str(tmp_path) and seen["ctx_id"] == -1
    red = np.zeros((2, 8, 8, 3), np.uint8)
    red[..., 0] = 255  # RGB red -> BGR (0, 0, 255)
    m = arc.clip_metrics(None, red, red[0], {})
    assert seen["first_pixel"] == [0, 0, 255]
    assert m["csim_arcface"] == pytest.approx(1.0)  # the largest face, same embedding as the reference
    blue = np.zeros((2, 8, 8, 3), np.uint8)
    blue[..., 2] = 255
    assert arc.clip_metrics(None, blue, red[0], {})["csim_arcface"] == pytest.approx(0.8)
    assert np.isnan(arc.clip_metrics(None, blue, np.zeros_like(red[0]), {})["csim_arcface"])
    assert arc.row_metrics("model", [], [], [{"csim_arcface": 0.5}, {"csim_arcface": float("nan")}])["csim_arcface"] == 0.5
