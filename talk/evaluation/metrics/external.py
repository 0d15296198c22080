"""Paper-style metrics that need weights the user supplies (none ship with talk).

Each class scores one clip (``clip_metrics``) and a row of clips (``row_metrics``); `evaluate`
builds them only when their params path is set, and notes the skip otherwise.

- ``SyncNetMetric``: Sync-C / Sync-D with syncnet_python's ``syncnet_v2.model`` (a state dict,
  loaded with ``weights_only=True``) and its evaluation protocol: 224 px BGR face frames in
  windows of 5, MFCC windows of 20 (python_speech_features' defaults, re-implemented below),
  offsets of +-15 frames. Our aligned crop stands in for its S3FD face crop.
- ``InceptionFeatures``: FID in Inception-v3 pool3 space with a TorchScript detector taking uint8
  (N, 3, H, W) and ``return_features=True`` (StyleGAN2-ADA / clean-fid ``inception-2015-12-05.pt``).
- ``ArcFaceCSIM``: CSIM with an insightface pack (``FaceAnalysis``; detection + ArcFace embedding).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError

# --------------------------------------------------------------------------------------------
# MFCC as python_speech_features.mfcc(signal, 16000) computes it (its defaults)

MFCC_RATE = 16_000  # Hz
MFCC_WINLEN, MFCC_WINSTEP = 0.025, 0.01  # s
MFCC_NUMCEP, MFCC_NFILT, MFCC_NFFT = 13, 26, 512
MFCC_PREEMPH, MFCC_LIFTER = 0.97, 22


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _hz2mel(hz):
    return 2595 * np.log10(1 + np.asarray(hz, np.float64) / 700.0)


def _mel2hz(mel):
    return 700 * (10 ** (np.asarray(mel, np.float64) / 2595.0) - 1)


def mel_filterbank(nfilt: int = MFCC_NFILT, nfft: int = MFCC_NFFT, rate: int = MFCC_RATE) -> np.ndarray:
    """Triangular mel filters (nfilt, nfft // 2 + 1), python_speech_features.get_filterbanks."""
    mel = np.linspace(_hz2mel(0), _hz2mel(rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mel) / rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def _dct2_ortho(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis (scipy.fftpack.dct(type=2, norm='ortho'))."""
    n = x.shape[-1]
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))  # (n_out, n_in)
    scale = np.full(n, np.sqrt(2.0 / n))
    scale[0] = np.sqrt(1.0 / n)
    return (x @ basis.T) * scale


def mfcc(signal: np.ndarray, rate: int = MFCC_RATE) -> np.ndarray:
    """13 MFCCs at 100 Hz, (N, 13), with c0 replaced by the log frame energy (appendEnergy)."""
    sig = np.asarray(signal, np.float64)
    sig = np.append(sig[0], sig[1:] - MFCC_PREEMPH * sig[:-1])
    flen, fstep = _round_half_up(MFCC_WINLEN * rate), _round_half_up(MFCC_WINSTEP * rate)
    n = 1 if len(sig) <= flen else 1 + int(math.ceil((len(sig) - flen) / fstep))
    padded = np.concatenate([sig, np.zeros((n - 1) * fstep + flen - len(sig))])
    idx = np.arange(flen)[None, :] + fstep * np.arange(n)[:, None]
    frames = padded[idx]  # (N, 400), rectangular window
    pspec = np.abs(np.fft.rfft(frames, MFCC_NFFT)) ** 2 / MFCC_NFFT
    eps = np.finfo(float).eps
    energy = pspec.sum(1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank(rate=rate).T
    feat = np.log(np.where(feat == 0, eps, feat))
    feat = _dct2_ortho(feat)[:, :MFCC_NUMCEP]
    lift = 1 + (MFCC_LIFTER / 2.0) * np.sin(np.pi * np.arange(MFCC_NUMCEP) / MFCC_LIFTER)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat


# --------------------------------------------------------------------------------------------
# SyncNet


class SyncNetMetric:
    """Sync-C / Sync-D per clip (syncnet_python ``SyncNetInstance.evaluate``), row = mean."""

    VSHIFT = 15  # frames of offset searched, as syncnet_python's default
    SIZE = 224  # px, face frames

    def __init__(self, checkpoint: Path, batch: int = 20):
        import torch

        from talk.models.syncnet import SyncNet

        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise TalkError(f"SyncNet checkpoint not found at {path.resolve()} (evaluate.syncnet)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a foreign file: one line for the user
            raise TalkError(f"{path}: not a SyncNet state dict ({type(e).__name__})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        self.net = SyncNet()
        try:
            self.net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as e:
            raise TalkError(f"{path}: does not match syncnet_python's SyncNet ({str(e).splitlines()[0]})") from None
        self.net.eval()
        self.batch = batch

    def clip_metrics(self, clip, frames: np.ndarray, ref_frame: np.ndarray, extra: dict) -> dict:
        import cv2
        import torch

        from talk.models.syncnet import offset_distances, sync_scores

        n = min(len(frames), len(clip.audio) // 640)
        last = n - 5
        if last < 1:
            return {"sync_c": math.nan, "sync_d": math.nan, "syncnet_offset": math.nan}
        bgr = np.stack([cv2.resize(f[:, :, ::-1], (self.SIZE, self.SIZE), interpolation=cv2.INTER_LINEAR)
                        for f in frames[:n]]).astype(np.float32)  # (T, 224, 224, 3)
        video = torch.from_numpy(bgr).permute(3, 0, 1, 2)[None]  # (1, 3, T, 224, 224)
        cc = torch.from_numpy(mfcc(clip.audio * 32768.0).T.astype(np.float32))[None, None]  # (1, 1, 13, N)
        vf, af = [], []
        with torch.no_grad():
            for i in range(0, last, self.batch):
                js = range(i, min(last, i + self.batch))
                vf.append(self.net.forward_lip(torch.cat([video[:, :, j:j + 5] for j in js])))
                af.append(self.net.forward_aud(torch.cat([cc[:, :, :, 4 * j:4 * j + 20] for j in js])))
        dists = offset_distances(torch.cat(vf), torch.cat(af), self.VSHIFT)
        conf, dist, offset = sync_scores(dists, self.VSHIFT)
        return {"sync_c": conf, "sync_d": dist, "syncnet_offset": offset}

    def row_metrics(self, row: str, extras: list[dict], real_extras: list[dict], metrics: list[dict]) -> dict:
        out = {}
        for key in ("sync_c", "sync_d"):
            v = np.array([m[key] for m in metrics], np.float64)
            out[key] = float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan
        return out


# --------------------------------------------------------------------------------------------
# Inception FID


class InceptionFeatures:
    """FID in Inception pool3 space (2048-d) with a user-supplied TorchScript detector."""

    def __init__(self, path: Path, stride: int = 5, batch: int = 16):
        import torch

        path = Path(path).expanduser()
        if not path.is_file():
            raise TalkError(f"Inception TorchScript not found at {path.resolve()} (evaluate.inception)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - a foreign file: one line for the user
            raise TalkError(f"{path}: not a TorchScript module ({type(e).__name__})") from None
        self.stride = stride
        self.batch = batch

    def features(self, frames: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(frames[:: self.stride])).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
        with torch.no_grad():
            out = [self.net(x[i:i + self.batch], return_features=True) for i in range(0, len(x), self.batch)]
        return torch.cat(out).double().numpy()

    def clip_metrics(self, clip, frames: np.ndarray, ref_frame: np.ndarray, extra: dict) -> dict:
        extra["inception"] = self.features(frames)
        return {}

    def row_metrics(self, row: str, extras: list[dict], real_extras: list[dict], metrics: list[dict]) -> dict:
        from talk.evaluation.metrics.distribution import frechet_distance

        gen = np.concatenate([e["inception"] for e in extras])
        real = np.concatenate([e["inception"] for e in real_extras])
        return {"fid_inception": frechet_distance(gen, real)}


# --------------------------------------------------------------------------------------------
# ArcFace CSIM


class ArcFaceCSIM:
    """CSIM with insightface's detector + ArcFace recogniser from a local pack (offline)."""

    def __init__(self, weights_root: Path, pack: str, stride: int = 5):
        from talk.core.weights import insightface_pack

        insightface_pack(weights_root, pack)  # TalkError saying where the pack belongs
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise TalkError("ArcFace CSIM needs insightface: pip install -e '.[insightface]'") from None
        self.app = FaceAnalysis(name=pack, root=str(Path(weights_root).expanduser()),
                                allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"])
        self.app.prepare(ctx_id=-1, det_size=(320, 320))
        self.stride = stride

    def embed(self, frame: np.ndarray) -> np.ndarray | None:
        faces = self.app.get(np.ascontiguousarray(frame[:, :, ::-1]))  # insightface wants BGR
        if not faces:
            return None
        face = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        return np.asarray(face.normed_embedding, np.float64)

    def clip_metrics(self, clip, frames: np.ndarray, ref_frame: np.ndarray, extra: dict) -> dict:
        ref = self.embed(ref_frame)
        if ref is None:
            return {"csim_arcface": math.nan}
        embs = [e for e in (self.embed(f) for f in frames[:: self.stride]) if e is not None]
        if not embs:
            return {"csim_arcface": 0.0}
        return {"csim_arcface": float(np.mean(np.stack(embs) @ ref))}

    def row_metrics(self, row: str, extras: list[dict], real_extras: list[dict], metrics: list[dict]) -> dict:
        v = np.array([m["csim_arcface"] for m in metrics], np.float64)
        return {"csim_arcface": float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan}
