"""Stage ``fit_vae``: the image autoencoder whose latent space the diffusion model works in.

LDM §3 (Rombach et al. 2022): a KL-regularised autoencoder maps an S px crop to a small latent;
DICE-Talk §3.1 and SVP §3 use Stable Diffusion's VAE. ``model.vae.source`` chooses:

- ``own`` (the CPU profile): a small ``diffusers.AutoencoderKL`` (models/vae.py) trained here on
  random patches of training-split crops, L1 + L2 + finite-difference (edge) loss + a small KL,
  AdamW with warm-up and cosine decay.
- a local diffusers AutoencoderKL folder (e.g. SD's ``vae/``; the full profile): loaded with
  ``from_pretrained`` on that path only, never trained.

Either way the stage then measures, on frames of the data:
- the latent scaling factor ``1 / std(z)`` over posterior samples z of training frames (so that
  ``z * scaling_factor`` has unit variance, LDM §4.3.2), written into the saved ``config.json``;
- reconstruction PSNR / SSIM of held-out ``val`` frames (decoded from the posterior mean),
  written to ``metrics.json``.

Output ``<out>/``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (a diffusers folder
whatever the source), ``metrics.json``, ``loss.tsv`` (training curve) and ``params.yaml``.
``load_vae`` / ``encode_frames`` / ``decode_latents`` are the entry points of the later stages;
the VAE identity (hash of config + weights) keys the latent cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from talk.artifacts.vae import decode_latents, encode_frames, save_vae, vae_identity, vae_source_dir
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.params import rng
from talk.core.runtime import console, log, progress
from talk.data.crops import clip_file, read_frames, read_manifest

METRICS = "metrics.json"
LOSS_LOG = "loss.tsv"


@dataclasses.dataclass(frozen=True)
class Config:
    crops: Path = Path("data/crops")  # input: crop_align's folder (manifest.csv, <clip>/frames.mp4)
    out: Path = Path("artifacts/vae")  # output: diffusers AutoencoderKL folder + metrics.json, loss.tsv
    max_clips: int = dataclasses.field(default=96, metadata=rng(0))  # train clips read (a seeded random subset; decoding is the cost); 0 = all
    frames_per_clip: int = dataclasses.field(default=12, metadata=rng(1))  # training frames taken per read clip (evenly spread, random phase)
    val_frames: int = dataclasses.field(default=64, metadata=rng(1))  # held-out frames (from val clips) for PSNR / SSIM
    scale_frames: int = dataclasses.field(default=128, metadata=rng(1))  # training frames encoded to measure the scaling factor
    steps: int = dataclasses.field(default=800, metadata=rng(0))  # optimisation steps of the own VAE (a pretrained source is not trained)
    batch_size: int = dataclasses.field(default=8, metadata=rng(1))  # patches per step
    patch: int = dataclasses.field(default=64, metadata=rng(0))  # px, side of the random square patch trained on; 0 = whole crop
    lr: float = dataclasses.field(default=2e-3, metadata=rng(0.0))  # AdamW peak learning rate
    lr_min: float = dataclasses.field(default=1e-4, metadata=rng(0.0))  # learning rate at the end of the cosine decay
    warmup: int = dataclasses.field(default=20, metadata=rng(0))  # steps of linear learning-rate warm-up
    weight_decay: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # AdamW weight decay
    l1: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the L1 reconstruction loss
    l2: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # weight of the L2 reconstruction loss
    gradient: float = dataclasses.field(default=0.5, metadata=rng(0.0))  # weight of the finite-difference (edge) L1 loss
    kl: float = dataclasses.field(default=1e-6, metadata=rng(0.0))  # weight of the per-element KL to N(0, I)
    flip: bool = True  # random horizontal flips of training patches
    eval_batch: int = dataclasses.field(default=32, metadata=rng(1))  # frames per encode / decode batch when measuring
    log_every: int = dataclasses.field(default=25, metadata=rng(1))  # steps between rows of loss.tsv

    def pretrained(self, params) -> list:
        """For `talk doctor`: the pretrained VAE folder, when ``model.vae.source`` names one."""
        from talk.core import weights

        src = params.model.vae.source
        if params.model.vae.is_own:
            return []
        return [weights.check("image VAE (diffusers AutoencoderKL)", src, True, lambda: vae_source_dir(src))]


# --------------------------------------------------------------------------------------------
# Saving, loading, identity


# --------------------------------------------------------------------------------------------
# Encoding and decoding (the helpers render / evaluate / cache_latents use)


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
    with progress() as bar:
        task = bar.add_task(f"reading {what} crops", total=len(rows))
        for row in rows.itertuples(index=False):
            path = clip_file(crops, row, "frames.mp4")
            out.append(read_frames(path, _spread(int(row.n_frames), per_clip, g), size))
            bar.advance(task)
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# Training and measuring


def _lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay from lr to lr_min."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def train(vae, frames: np.ndarray, cfg: Config, seed: int, device) -> list[dict]:
    """Optimise ``vae`` on random patches of ``frames`` (N, S, S, 3) uint8; returns the loss log."""
    import torch

    from talk.models.vae import LossWeights, vae_loss

    w = LossWeights(l1=cfg.l1, l2=cfg.l2, gradient=cfg.gradient, kl=cfg.kl)
    g = np.random.default_rng([seed, 1])
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    size = frames.shape[1]
    patch = size if cfg.patch == 0 else min(cfg.patch, size)
    vae.train()
    rows, acc = [], []
    with progress() as bar:
        task = bar.add_task("fit_vae", total=cfg.steps)
        for step in range(cfg.steps):
            idx = g.integers(0, len(frames), cfg.batch_size)
            i, j = g.integers(0, size - patch + 1, 2)
            x = frames[idx, i : i + patch, j : j + patch]  # (B, p, p, 3) uint8
            if cfg.flip:
                x = np.where(g.random(len(x))[:, None, None, None] < 0.5, x[:, :, ::-1], x)
            x = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss, parts = vae_loss(vae, x, w, generator=gen)  # x: (B, 3, p, p) in [-1, 1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc.append({"loss": float(loss.detach()), **parts})
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                mean = {k: float(np.mean([a[k] for a in acc])) for k in acc[0]}
                rows.append({"step": step + 1, "lr": _lr_at(step, cfg), **mean})
                log.debug("fit_vae step %d: %s", step + 1, mean)
                acc = []
            bar.advance(task)
    vae.eval()
    return rows


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


def reconstruction_metrics(vae, frames: np.ndarray, chunk: int) -> dict[str, float]:
    """PSNR (dB) and SSIM of frames decoded from their posterior mean, averaged over frames."""
    import torch

    from talk.models.vae import psnr, ssim

    mean, _ = encode_frames(vae, frames, chunk)
    rec = decode_latents(vae, mean, chunk, scaling_factor=1.0)  # (N, H, W, 3) uint8
    a = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    b = torch.from_numpy(rec).permute(0, 3, 1, 2).float() / 255
    return {"psnr": float(psnr(a, b).mean()), "ssim": float(ssim(a, b).mean())}


def _split_rows(df, seed: int):
    """Training rows and held-out rows: the val split, else every 10th train clip (with a warning)."""
    train = df[df["split"] == "train"]
    val = df[df["split"] == "val"]
    if len(train) == 0:
        raise TalkError("fit_vae: the crop manifest has no train clips")
    if len(val) == 0:
        if len(train) < 2:
            raise TalkError("fit_vae: need a val clip (or two train clips) to measure reconstruction on held-out frames")
        held = np.random.default_rng(seed).permutation(len(train))[: max(1, len(train) // 10)]
        log.warning("fit_vae: no val clips; holding out %d train clip(s) for the metrics", len(held))
        val = train.iloc[np.sort(held)]
        train = train.drop(index=val.index)
    return train, val


def run(params) -> dict[str, Any]:
    """Train (own) or load (pretrained) the VAE, measure scaling factor and val PSNR / SSIM, save."""
    import torch
    from rich.table import Table

    from talk.core.runtime import device as pick_device
    from talk.models.vae import build_vae

    cfg: Config = params.fit_vae
    mcfg = params.model.vae
    size = params.model.image_size
    seed = params.base.seed
    device = pick_device(params.base.device)
    df = read_manifest(cfg.crops)
    train_rows, val_rows = _split_rows(df, seed)
    if cfg.max_clips and len(train_rows) > cfg.max_clips:
        pick = np.random.default_rng([seed, 3]).choice(len(train_rows), cfg.max_clips, replace=False)
        train_rows = train_rows.iloc[np.sort(pick)]
    t0 = time.perf_counter()

    train_frames = gather_frames(cfg.crops, train_rows, cfg.frames_per_clip, size, seed, "train")
    per_val = max(1, math.ceil(cfg.val_frames / len(val_rows)))
    val_frames = gather_frames(cfg.crops, val_rows, per_val, size, seed + 1, "val")[: cfg.val_frames]
    t_read = time.perf_counter() - t0

    torch.manual_seed(seed)
    if mcfg.is_own:
        vae = build_vae(mcfg, size).to(device)
        if size % mcfg.downsampling():
            raise TalkError(f"model.image_size {size} is not a multiple of the VAE downsampling {mcfg.downsampling()}")
        t1 = time.perf_counter()
        curve = train(vae, train_frames, cfg, seed, device)
        t_train = time.perf_counter() - t1
    else:
        from diffusers import AutoencoderKL

        src = vae_source_dir(mcfg.source)
        vae = AutoencoderKL.from_pretrained(str(src), local_files_only=True).to(device, torch.float32).eval()
        curve, t_train = [], 0.0
    vae.requires_grad_(False)

    pick = np.random.default_rng([seed, 2]).permutation(len(train_frames))[: cfg.scale_frames]
    scaling, stats = measure_scaling(vae, train_frames[np.sort(pick)], cfg.eval_batch)
    vae.register_to_config(scaling_factor=scaling)
    rec = reconstruction_metrics(vae, val_frames, cfg.eval_batch)
    metrics = {
        "val_psnr": rec["psnr"],
        "val_ssim": rec["ssim"],
        "val_frames": int(len(val_frames)),
        "scaling_factor": scaling,
        **stats,
        "train_frames": int(len(train_frames)),
        "steps": cfg.steps if mcfg.is_own else 0,
        "loss_first": curve[0]["loss"] if curve else None,
        "loss_last": curve[-1]["loss"] if curve else None,
        "parameters": int(sum(p.numel() for p in vae.parameters())),
        "source": str(mcfg.source),
    }

    with atomic_dir(cfg.out) as tmp:
        save_vae(vae.to("cpu"), tmp)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=1) + "\n")
        cols = ["step", "lr", "loss", "l1", "l2", "gradient", "kl"]
        lines = ["\t".join(cols)] + ["\t".join(f"{r[c]:.6g}" for c in cols) for r in curve]
        (tmp / LOSS_LOG).write_text("\n".join(lines) + "\n")
        params.write_resolved(tmp / "params.yaml", ["base", "model", "fit_vae"])
    identity = vae_identity(cfg.out)

    table = Table(title=f"fit_vae -> {cfg.out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("source", str(mcfg.source))
    table.add_row("latent", f"{tuple(stats['latent_shape'])} for {size} px")
    table.add_row("frames (train / val)", f"{len(train_frames)} / {len(val_frames)}")
    if curve:
        table.add_row("loss (first / last)", f"{curve[0]['loss']:.4f} / {curve[-1]['loss']:.4f}")
    table.add_row("val PSNR / SSIM", f"{rec['psnr']:.2f} dB / {rec['ssim']:.4f}")
    table.add_row("scaling factor", f"{scaling:.4f}")
    table.add_row("time (read / train / total)", f"{t_read:.1f} / {t_train:.1f} / {time.perf_counter() - t0:.1f} s")
    table.add_row("identity", identity[:16])
    console.print(table)
    return {**metrics, "identity": identity}
