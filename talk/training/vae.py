"""Fitting the image autoencoder whose latent space the diffusion model works in (LDM §3; docs/method.md §4).

``model.vae.source: own`` trains a small ``diffusers.AutoencoderKL`` (models/vae.py) on random
patches of training-split crops — L1 + L2 + finite-difference (edge) loss + a small KL — with the
shared training loop (talk/training/trainer.py: AdamW, warm-up + cosine, resumable checkpoints in
``<paths.vae>/checkpoints``). A local diffusers folder (e.g. SD's ``vae/``) is loaded, never trained.

Either way the VAE is then measured on frames of the data: the latent scaling factor ``1 / std(z)``
over posterior samples of training frames (LDM §4.3.2), written into its config.json, and the
reconstruction PSNR / SSIM of held-out val frames (talk/evaluation/metrics/image.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from talk.artifacts.vae import decode_latents, encode_frames, save_vae, vae_source_dir
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.params import rng, to_plain
from talk.data.crops import clip_file, read_frames, read_manifest
from talk.media.io import encode_image
from talk.training.trainer import LoopConfig, StepResult, Trainer, export_dir, loop_field, merged_history

CURVE = ("step", "lr", "loss", "l1", "l2", "gradient", "spectrum", "kl")  # columns of loss.tsv


@dataclasses.dataclass(frozen=True)
class FitVaeConfig:
    """The ``fit_vae`` section (paths: ``paths.crops`` in, ``paths.vae`` out)."""

    max_clips: int = dataclasses.field(default=96, metadata=rng(0))  # train clips read (a seeded random subset; decoding is the cost); 0 = all
    frames_per_clip: int = dataclasses.field(default=12, metadata=rng(1))  # training frames taken per read clip (evenly spread, random phase)
    val_frames: int = dataclasses.field(default=64, metadata=rng(1))  # held-out frames (from val clips) for PSNR / SSIM
    scale_frames: int = dataclasses.field(default=128, metadata=rng(1))  # training frames encoded to measure the scaling factor
    patch: int = dataclasses.field(default=64, metadata=rng(0))  # px, side of the random square patch trained on; 0 = whole crop
    l1: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the L1 reconstruction loss
    l2: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # weight of the L2 reconstruction loss
    gradient: float = dataclasses.field(default=0.5, metadata=rng(0.0))  # weight of the finite-difference (edge) L1 loss
    spectrum: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # weight of the log-amplitude spectrum L1 loss (fine detail)
    colour: float = dataclasses.field(default=0.0, metadata=rng(0.0, 1.0))  # fraction of training patches given a random hue / saturation / contrast
    pca_patches: int = dataclasses.field(default=2048, metadata=rng(1))  # (patch kind) training patches whose block statistics set the PCA path
    kl: float = dataclasses.field(default=1e-6, metadata=rng(0.0))  # weight of the per-element KL to N(0, I)
    flip: bool = True  # random horizontal flips of training patches
    eval_batch: int = dataclasses.field(default=32, metadata=rng(1))  # frames per encode / decode batch when measuring
    loop: LoopConfig = loop_field(steps=800, batch_size=8, lr=2e-3, weight_decay=0.0, warmup_steps=20,
                                  lr_schedule="cosine", grad_clip=0.0, ema_decay=0.0, checkpoint_every=200,
                                  keep_checkpoints=2, log_every=25, workers=0)  # optimisation of the own VAE (a pretrained source is not trained)


# --------------------------------------------------------------------------------------------
# Reading crops


def _spread(n_frames: int, k: int, rng_: np.random.Generator) -> np.ndarray:
    """k frame indices evenly spread over a clip, with a random phase."""
    k = min(k, n_frames)
    step = n_frames / k
    return np.unique((rng_.uniform(0, step) + step * np.arange(k)).astype(int).clip(0, n_frames - 1))


def gather_frames(crops: Path, rows, per_clip: int, size: int, seed: int, what: str) -> np.ndarray:
    """``per_clip`` frames of each manifest row -> (N, size, size, 3) uint8."""
    g = np.random.default_rng(seed)
    out = []
    with runtime.progress() as bar:
        task = bar.add_task(f"reading {what} crops", total=len(rows))
        for row in rows.itertuples(index=False):
            path = clip_file(crops, row, "frames.mp4")
            out.append(read_frames(path, _spread(int(row.n_frames), per_clip, g), size))
            bar.advance(task)
    return np.concatenate(out)


def split_rows(df, seed: int):
    """Training rows and held-out rows: the val split, else every 10th train clip (with a warning)."""
    train = df[df["split"] == "train"]
    val = df[df["split"] == "val"]
    if len(train) == 0:
        raise TalkError("fit_vae: the crop manifest has no train clips")
    if len(val) == 0:
        if len(train) < 2:
            raise TalkError("fit_vae: need a val clip (or two train clips) to measure reconstruction on held-out frames")
        held = np.random.default_rng(seed).permutation(len(train))[: max(1, len(train) // 10)]
        runtime.log.warning("fit_vae: no val clips; holding out %d train clip(s) for the metrics", len(held))
        val = train.iloc[np.sort(held)]
        train = train.drop(index=val.index)
    return train, val


def read_data(crops: Path, cfg: FitVaeConfig, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train frames, val frames), (N, S, S, 3) uint8, from the crop manifest's splits."""
    train_rows, val_rows = split_rows(read_manifest(crops), seed)
    if cfg.max_clips and len(train_rows) > cfg.max_clips:
        pick = np.random.default_rng([seed, 3]).choice(len(train_rows), cfg.max_clips, replace=False)
        train_rows = train_rows.iloc[np.sort(pick)]
    train = gather_frames(crops, train_rows, cfg.frames_per_clip, size, seed, "train")
    per_val = max(1, math.ceil(cfg.val_frames / len(val_rows)))
    val = gather_frames(crops, val_rows, per_val, size, seed + 1, "val")[: cfg.val_frames]
    return train, val


# --------------------------------------------------------------------------------------------
# Training


def colour_transform(g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random affine colour map (3x3 matrix, offset) on RGB in [-1, 1]: hue rotated by any angle
    in the YIQ chroma plane, saturation x0.35..2.8, contrast x0.6..1.6, brightness +-0.2. Training
    a codec on such colours keeps the ones the training faces never show (a saturated flag, a
    blue background)."""
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a = g.uniform(-np.pi, np.pi)
    sat, con = np.exp(g.uniform(-1.05, 1.05)), np.exp(g.uniform(-0.5, 0.5))
    rot = np.array([[1, 0, 0], [0, sat * np.cos(a), -sat * np.sin(a)], [0, sat * np.sin(a), sat * np.cos(a)]])
    m = con * np.linalg.inv(yiq) @ rot @ yiq
    return m.astype(np.float32), np.full(3, g.uniform(-0.2, 0.2), np.float32)


class Patches:
    """Random square patches of frames, one per index (frame, position, flip, colour seeded by
    (seed, index))."""

    def __init__(self, frames: np.ndarray, patch: int, flip: bool, seed: int, colour: float = 0.0):
        size = frames.shape[1]
        self.frames, self.flip, self.seed, self.colour = frames, flip, seed, colour
        self.patch = size if patch == 0 else min(patch, size)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        import torch

        g = np.random.default_rng([self.seed, 1, int(index)])
        p = self.patch
        f = int(g.integers(len(self.frames)))
        i, j = g.integers(0, self.frames.shape[1] - p + 1, 2)
        x = self.frames[f, i : i + p, j : j + p]  # (p, p, 3) uint8
        if self.flip and g.random() < 0.5:
            x = x[:, ::-1]
        x = np.ascontiguousarray(x).astype(np.float32) / 127.5 - 1  # (p, p, 3) in [-1, 1]
        if self.colour and g.random() < self.colour:
            m, b = colour_transform(g)
            x = np.clip(x @ m.T + b, -1, 1)
        return {"x": torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)}  # (3, p, p)


def _loss_module(vae, cfg: FitVaeConfig):
    """The VAE inside an nn.Module whose forward is the training loss (so DDP sees every use)."""
    from torch import nn

    from talk.models.vae import LossWeights, vae_loss

    class VaeLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae
            self.weights = LossWeights(l1=cfg.l1, l2=cfg.l2, gradient=cfg.gradient, spectrum=cfg.spectrum, kl=cfg.kl)

        def forward(self, x, generator):
            return vae_loss(self.vae, x, self.weights, generator=generator)

    return VaeLoss()


def _objective(model, batch: dict, g, step: int) -> StepResult:
    loss, parts = model(batch["x"], g)  # x: (B, 3, p, p)
    return StepResult(loss, {"loss": float(loss.detach()), **parts})


def data_hash(frames: np.ndarray) -> str:
    """Identity of the training frames (a run resumes only on the data it started on)."""
    return hashlib.sha256(np.ascontiguousarray(frames).data).hexdigest()[:16]


def train(vae, frames: np.ndarray, cfg: FitVaeConfig, run_config: dict, checkpoints: Path, seed: int,
          device: str = "auto") -> tuple[Any, list[dict], Trainer]:
    """Optimise ``vae`` on random patches of ``frames`` (N, S, S, 3) uint8, resuming from
    ``checkpoints``; returns (trained VAE in eval mode, loss curve rows, trainer)."""
    stage = {k: v for k, v in to_plain(cfg).items() if k not in ("loop", "val_frames", "scale_frames", "eval_batch")}
    patches = Patches(frames, cfg.patch, cfg.flip, seed, cfg.colour)
    if hasattr(vae, "fit_pca"):  # the PatchAutoencoder's linear path, from (augmented) training patches
        import torch

        from talk.models.patch_vae import block_statistics

        x = torch.stack([patches[i]["x"] for i in range(cfg.pca_patches)])  # same seeds as training's first steps
        vae.fit_pca(*block_statistics(x, vae.config.patch_size))
    trainer = Trainer(cfg.loop, _loss_module(vae, cfg), checkpoints, {"stage": stage, **run_config, "data": data_hash(frames)},
                      seed, device, name="vae", stage="fit-vae")
    trainer.fit(trainer.batches(patches, lambda start: itertools.count(start)), _objective, description="fit_vae")
    curve = [row for row in merged_history(trainer.history) if "loss" in row]
    vae = trainer.final_model.vae.eval()
    return vae, curve, trainer


# --------------------------------------------------------------------------------------------
# Measuring


def measure_scaling(vae, frames: np.ndarray, chunk: int) -> tuple[float, dict[str, Any]]:
    """1 / std of posterior samples z = mean + std * eps over ``frames`` (LDM §4.3.2)."""
    mean, std = encode_frames(vae, frames, chunk)  # (N, C, h, w)
    # Var(z) = Var(mean) + E[std^2] (law of total variance over frames, positions, channels)
    var = float(mean.double().var() + std.double().pow(2).mean())
    return 1.0 / math.sqrt(var), {
        "latent_mean": float(mean.mean()),
        "latent_std": math.sqrt(var),
        "posterior_std_mean": float(std.mean()),
        "latent_shape": list(mean.shape[1:]),
    }


def round_trip(vae, frames: np.ndarray, chunk: int) -> np.ndarray:
    """uint8 frames (N, H, W, 3) decoded from their posterior mean."""
    mean, _ = encode_frames(vae, frames, chunk)
    return decode_latents(vae, mean, chunk, scaling_factor=1.0)


def round_trip_strip(vae, frames: np.ndarray, chunk: int, n: int = 8) -> np.ndarray:
    """(2 S, n S, 3) uint8: ``n`` evenly spaced frames above their round trip."""
    pick = frames[np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)]
    rec = round_trip(vae, pick, chunk)
    return np.concatenate([np.concatenate(list(pick), 1), np.concatenate(list(rec), 1)], 0)


def reconstruction_metrics(vae, frames: np.ndarray, chunk: int, identity: bool = True) -> dict[str, float]:
    """How much of the face the round trip keeps, averaged over frames (N, H, W, 3) uint8: PSNR
    (dB), SSIM (talk/evaluation/metrics/image.py, the figures evaluate reports), CIELAB ΔE and
    Laplacian sharpness ratio over the face box, dlib-128 identity distance
    (talk/evaluation/metrics/fidelity.py)."""
    from talk.evaluation.metrics.fidelity import fidelity
    from talk.evaluation.metrics.image import psnr, ssim

    rec = round_trip(vae, frames, chunk)
    out = {"psnr": float(psnr(rec, frames).mean()), "ssim": float(ssim(rec, frames).mean())}
    analyzer = None
    if identity:
        from talk.evaluation.metrics.face import FaceAnalyzer

        analyzer = FaceAnalyzer()
    f = fidelity(rec, frames, analyzer)
    out["delta_e"] = float(np.mean(f["delta_e"]))
    out["sharpness"] = float(np.nanmean(f["sharpness"]))
    if analyzer is not None:
        out["identity"] = float(np.nanmean(f["identity"])) if np.isfinite(f["identity"]).any() else float("nan")
        out["face_found"] = float(f["face_found"].mean())
    return out


# --------------------------------------------------------------------------------------------
# The stage's work


def run_stage(params, cfg: FitVaeConfig, on_export) -> dict[str, Any]:
    """Train (own) or load (pretrained) the VAE on ``paths.crops``, measure it, write ``paths.vae``
    (keeping its ``checkpoints/``); ``on_export(tmp)`` adds files to the output folder."""
    import torch

    from talk.models.vae import build_vae

    mcfg, size, seed, out = params.model.vae, params.model.image_size, params.base.seed, Path(params.paths.vae)
    t0 = time.perf_counter()
    train_frames, val_frames = read_data(params.paths.crops, cfg, size, seed)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    if mcfg.is_own:
        if size % mcfg.downsampling():
            raise TalkError(f"model.image_size {size} is not a multiple of the VAE downsampling {mcfg.downsampling()}")
        runtime.seed_everything(seed)
        vae = build_vae(mcfg, size)
        vae, curve, trainer = train(vae, train_frames, cfg, {"vae": to_plain(mcfg), "image_size": size},
                                    out / "checkpoints", seed, params.base.device)
        device = trainer.device
    else:
        from diffusers import AutoencoderKL

        src = vae_source_dir(mcfg.source)
        device = runtime.device(params.base.device)
        try:
            vae = AutoencoderKL.from_pretrained(str(src), local_files_only=True).to(device, torch.float32).eval()
        except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
            raise TalkError(f"model.vae.source: cannot load the AutoencoderKL in {src} ({type(e).__name__})") from None
        curve = []
    t_train = time.perf_counter() - t1
    vae.requires_grad_(False)

    pick = np.random.default_rng([seed, 2]).permutation(len(train_frames))[: cfg.scale_frames]
    scaling, stats = measure_scaling(vae, train_frames[np.sort(pick)], cfg.eval_batch)
    vae.register_to_config(scaling_factor=scaling)
    rec = reconstruction_metrics(vae, val_frames, cfg.eval_batch)
    strip = round_trip_strip(vae, val_frames, cfg.eval_batch)
    metrics = {
        "val_psnr": rec["psnr"], "val_ssim": rec["ssim"], "val_delta_e": rec["delta_e"],
        "val_sharpness": rec["sharpness"], "val_identity": rec["identity"], "val_face_found": rec["face_found"],
        "val_frames": int(len(val_frames)),
        "scaling_factor": scaling, **stats, "train_frames": int(len(train_frames)),
        "steps": cfg.loop.steps if mcfg.is_own else 0,
        "loss_first": curve[0]["loss"] if curve else None, "loss_last": curve[-1]["loss"] if curve else None,
        "parameters": int(sum(p.numel() for p in vae.parameters())), "source": str(mcfg.source),
    }
    with export_dir(out) as tmp:
        save_vae(vae.to("cpu"), tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / "roundtrip.png").write_bytes(encode_image(strip))
        lines = ["\t".join(CURVE)] + ["\t".join(f"{r.get(c, float('nan')):.6g}" for c in CURVE) for r in curve]
        (tmp / "loss.tsv").write_text("\n".join(lines) + "\n")
        on_export(tmp)
    timing = {"read": t_read, "train": t_train, "total": time.perf_counter() - t0}
    return {"metrics": metrics, "curve": curve, "timing": timing, "device": str(device)}


def summary(result: dict, out: Path, identity: str, size: int):
    """The run's figures as a rich table."""
    from rich.table import Table

    m, curve, tm = result["metrics"], result["curve"], result["timing"]
    table = Table(title=f"fit_vae -> {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("source", m["source"])
    table.add_row("latent", f"{tuple(m['latent_shape'])} for {size} px")
    table.add_row("frames (train / val)", f"{m['train_frames']} / {m['val_frames']}")
    if curve:
        table.add_row("loss (first / last)", f"{m['loss_first']:.4f} / {m['loss_last']:.4f}")
    table.add_row("val PSNR / SSIM", f"{m['val_psnr']:.2f} dB / {m['val_ssim']:.4f}")
    table.add_row("val ΔE / sharpness / identity", f"{m['val_delta_e']:.2f} / {m['val_sharpness']:.2f}x / {m['val_identity']:.3f}")
    table.add_row("scaling factor", f"{m['scaling_factor']:.4f}")
    table.add_row("time (read / train / total)", f"{tm['read']:.1f} / {tm['train']:.1f} / {tm['total']:.1f} s")
    table.add_row("identity", identity[:16])
    return table
