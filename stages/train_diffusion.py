"""Stage `train_diffusion`: the audio/emotion/style-conditioned latent denoiser (DICE-Talk §3, SVP §3.3).

Trains ``models.denoiser.TalkDenoiser`` on the latent cache: the target frame(s) of a window are
noised (diffusers scheduler betas; ε or v targets, min-SNR weights, offset noise), and the UNet sees
the reference latent, M motion-frame latents, per-frame Whisper windows, the clip's emotion
embedding z ~ N(mu, σ²) from the prior (through the Emotion Bank, trained jointly: its VQ loss is
added) and, with style tokens on, the clip's style embedding. Each condition is dropped on its own
with its own probability so rendering can guide each separately.

Reads ``latents`` (cache_latents), ``audio_features``, ``prior`` (pretrain_prior: the Emotion Bank
and clip_embeddings.npz) and ``vae`` (fit_vae, to decode preview samples). Writes:

- ``out`` (artifacts/diffusion): ``config.json`` + ``model.safetensors`` (EMA weights; rebuilt by
  ``load_denoiser``), ``scheduler_config.json`` (the diffusers scheduler), ``params.yaml``;
- ``work`` (artifacts/diffusion_train): ``checkpoints/`` (resumable, kept between runs),
  ``live/`` (dvclive: loss curves, preview frames), ``metrics.json``.

Multi-GPU: ``accelerate launch --multi_gpu --num_processes N -m talk.cli.main train-diffusion`` (talk/training/trainer.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.artifacts.denoiser import _bank_config, build_denoiser, pretrained_backbone, save_denoiser
from talk.artifacts.prior import ClipEmbeddings
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir, atomic_write_text
from talk.core.params import one_of, rng, to_plain
from talk.training.trainer import LoopConfig, StepResult, Trainer, stage_fields

if TYPE_CHECKING:
    import torch
    from torch import nn

    from talk.models.denoiser import DenoiserSpec, TalkDenoiser

T_BINS = 4  # noise-level bins of the validation loss (equal ranges of the schedule index)


@dataclasses.dataclass(frozen=True)
class PreviewConfig:
    """Sampled frames logged to dvclive while training (and the sampler they use)."""

    every: int = dataclasses.field(default=0, metadata=rng(0))  # steps between previews (0: only at the end)
    samples: int = dataclasses.field(default=3, metadata=rng(0))  # val windows sampled (0: no previews)
    sampler: str = dataclasses.field(default="euler", metadata=one_of("euler", "euler_ancestral", "heun", "dpmpp_2m"))  # models.sampling sampler
    steps: int = dataclasses.field(default=12, metadata=rng(1))  # sampler steps
    spacing: str = dataclasses.field(default="karras", metadata=one_of("karras", "uniform"))  # noise-level spacing
    guidance_ref: float = dataclasses.field(default=1.5, metadata=rng(0.0))  # guidance scale of the reference frame
    guidance_audio: float = dataclasses.field(default=2.0, metadata=rng(0.0))  # guidance scale of the audio
    guidance_emotion: float = dataclasses.field(default=2.0, metadata=rng(0.0))  # guidance scale of the emotion
    guidance_style: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # guidance scale of the style (1: not guided)

    def scales(self, style: bool) -> dict[str, float]:
        s = {"ref": self.guidance_ref, "audio": self.guidance_audio, "emotion": self.guidance_emotion}
        if style and self.guidance_style != 1.0:
            s["style"] = self.guidance_style
        return s


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The denoising objective's knobs (shared with finetune_disc)."""

    min_snr_gamma: float = dataclasses.field(default=5.0, metadata=rng(0.0))  # min-SNR-γ loss weighting (0: uniform)
    noise_offset: float = dataclasses.field(default=0.05, metadata=rng(0.0))  # offset-noise strength (0: off)
    drop_ref: float = dataclasses.field(default=0.05, metadata=rng(0.0, 1.0))  # P(reference + motion latents zeroed)
    drop_motion: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(motion latents zeroed alone: first window of a video)
    drop_audio: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(audio tokens -> null tokens)
    drop_emotion: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(emotion tokens -> null tokens)
    drop_style: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(style tokens -> null tokens)
    vq_weight: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the Emotion Bank's VQ loss
    sample_embeddings: bool = True  # z ~ N(mu, σ²) of the clip per sample (false: z = mu)


@dataclasses.dataclass(frozen=True)
class Config(ObjectiveConfig, LoopConfig):
    latents: Path = Path("data/latents.lmdb")  # input: cache_latents' LMDB of VAE latents
    audio_features: Path = Path("data/audio_features")  # input: <clip_id>.npy Whisper features
    crops: Path = Path("data/crops")  # input: crop_align's manifest.csv (splits, labels, frame counts)
    prior: Path = Path("artifacts/prior")  # input: pretrain_prior's folder (Emotion Bank, clip_embeddings.npz)
    vae: Path = Path("artifacts/vae")  # input: fit_vae's folder (decodes preview samples)
    out: Path = Path("artifacts/diffusion")  # output: the trained denoiser (load_denoiser)
    work: Path = Path("artifacts/diffusion_train")  # output: checkpoints/ (kept), live/ (dvclive), metrics.json
    val_batches: int = dataclasses.field(default=4, metadata=rng(0))  # val batches for the per-noise-level loss
    preview: PreviewConfig = dataclasses.field(default_factory=PreviewConfig)  # preview samples in dvclive


# --------------------------------------------------------------------------------------------
# Clip embeddings from the prior


# --------------------------------------------------------------------------------------------
# Building, saving and loading the denoiser


def make_spec(model_params, shapes: dict, bank_cfg, style_dim: int) -> DenoiserSpec:
    """The denoiser's spec from ``params.model`` and the data's shapes (read from a sample)."""
    from talk.models.denoiser import DenoiserSpec

    c, h, w = shapes["ref"]
    if h != w:
        raise TalkError(f"latents must be square, got {h}x{w}")
    f, k, layers, dim = shapes["audio"]
    m = shapes["motion"][0] if shapes.get("motion") else 0
    if f != shapes["target"][0]:
        raise TalkError(f"the dataset's audio has {f} frames per window but the target has {shapes['target'][0]}")
    checks = {"target_frames": (shapes["target"][0], model_params.target_frames),
              "motion_frames": (m, model_params.motion_frames),
              "audio_window": (k, model_params.audio_window)}
    for name, (got, want) in checks.items():
        if got != want:
            raise TalkError(f"the dataset gives {name}={got} but model.{name}={want}")
    cond = model_params.conditioning
    if cond.style_tokens and style_dim <= 0:
        raise TalkError("model.conditioning.style_tokens > 0 needs style embeddings: add 'style' to model.prior.heads")
    return DenoiserSpec(
        denoiser=model_params.denoiser,
        conditioning=cond,
        diffusion=model_params.diffusion,
        latent_channels=c,
        latent_size=h,
        motion_frames=m,
        target_frames=f,
        audio_window=k,
        audio_layers=layers,
        audio_dim=dim,
        emotion_dim=bank_cfg.emb_dim,
        emotion_tokens=bank_cfg.n_tokens,
        emotion_token_dim=bank_cfg.token_dim,
        style_dim=style_dim if cond.style_tokens else 0,
    )


# --------------------------------------------------------------------------------------------
# The objective


@dataclasses.dataclass
class Objective:
    """Denoising loss with per-condition dropout and the bank's VQ loss (one training step)."""

    cfg: ObjectiveConfig
    schedule: Any  # models.diffusion.NoiseSchedule on the training device
    embeddings: ClipEmbeddings
    style: bool  # the model has style tokens

    def conditions(self, batch: dict, g, device, drop: bool = True) -> dict:
        import torch

        b = batch["target"].shape[0]
        cfg = self.cfg
        probs = {"ref": cfg.drop_ref, "motion": cfg.drop_motion, "audio": cfg.drop_audio,
                 "emotion": cfg.drop_emotion, "style": cfg.drop_style}
        keep = {c: torch.rand(b, generator=g, device=device) >= (p if drop else 0.0) for c, p in probs.items()}
        emotion = self.embeddings.draw(batch["clip_id"], "emotion", g, device, cfg.sample_embeddings)
        style = self.embeddings.draw(batch["clip_id"], "style", g, device, cfg.sample_embeddings) if self.style else None
        motion = batch.get("motion")
        return dict(ref=batch["ref"], motion=motion if motion is not None and motion.shape[1] else None,
                    audio=batch["audio"], emotion=emotion, style=style, keep=keep)

    def __call__(self, model, batch: dict, g, step: int) -> StepResult:
        import torch

        from talk.models.diffusion import sample_noise, training_loss

        x0 = batch["target"]  # (B, F, C, h, w)
        device = x0.device
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=g, device=device)
        noise = sample_noise(x0.shape, g, device, self.cfg.noise_offset)
        cond = self.conditions(batch, g, device)
        out = training_loss(model, self.schedule, x0, noise, t, cond, self.cfg.min_snr_gamma)
        loss = out.loss + self.cfg.vq_weight * out.vq_loss
        return StepResult(loss, {"loss": out.loss.item(), "vq_loss": out.vq_loss.item()})


def t_bins(num_timesteps: int, bins: int = T_BINS) -> list[tuple[int, int]]:
    edges = np.linspace(0, num_timesteps, bins + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def validation_loss(model, objective: Objective, batches, seed: int, device) -> dict:
    """Unweighted denoising MSE per noise-level bin on fixed draws (all conditions kept)."""
    import torch

    from talk.models.diffusion import sample_noise, training_loss
    from talk.training.trainer import generator, step_seed

    bins = t_bins(objective.schedule.num_timesteps)
    sums = np.zeros(len(bins))
    counts = np.zeros(len(bins))
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            for j, (lo, hi) in enumerate(bins):
                g = generator(step_seed(seed, i, 0, f"val{j}"), device)
                x0 = batch["target"]
                t = torch.randint(lo, hi, (x0.shape[0],), generator=g, device=device)
                noise = sample_noise(x0.shape, g, device, 0.0)
                cond = objective.conditions(batch, g, device, drop=False)
                out = training_loss(model, objective.schedule, x0, noise, t, cond)
                sums[j] += float(out.per_sample.sum())
                counts[j] += x0.shape[0]
    per_bin = {f"t{lo}-{hi - 1}": round(float(s / max(c, 1)), 6) for (lo, hi), s, c in zip(bins, sums, counts)}
    return {"loss": round(float(sums.sum() / max(counts.sum(), 1)), 6), "per_t": per_bin}


# --------------------------------------------------------------------------------------------
# Previews


def sample_latents(model: TalkDenoiser, batch: dict, objective: Objective, preview: PreviewConfig, seed: int, device) -> torch.Tensor:
    """Sample target windows for a batch with per-sample seeds and multi-branch guidance."""
    import torch

    from talk.models.diffusion import KarrasDenoiser
    from talk.models.sampling import GuidedDenoiser, get_sigmas, per_sample_noise, sample
    from talk.training.trainer import generator, step_seed

    schedule = objective.schedule
    guided = GuidedDenoiser(KarrasDenoiser(model, schedule), preview.scales(objective.style))
    g = generator(step_seed(seed, 0, 0, "preview"), device)
    cond = objective.conditions(batch, g, device, drop=False)
    cond["emotion"] = objective.embeddings.draw(batch["clip_id"], "emotion", g, device, sample=False)
    if objective.style:
        cond["style"] = objective.embeddings.draw(batch["clip_id"], "style", g, device, sample=False)
    x0 = batch["target"]
    seeds = [step_seed(seed, i, 0, "preview-noise") % 2**31 for i in range(x0.shape[0])]
    noise = per_sample_noise(x0.shape, seeds, device)
    sigmas = get_sigmas(schedule, preview.steps, preview.spacing, device=device)
    model.eval()
    with torch.no_grad():
        return sample(guided, noise, sigmas, preview.sampler, cond)


class Decoder:
    """fit_vae's autoencoder as scaled latents -> RGB uint8 (previews)."""

    def __init__(self, path: Path, device):
        from talk.artifacts.vae import load_vae

        self.vae, self.scale, _ = load_vae(path, device)

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        """(N, C, h, w) scaled latents -> (N, H, W, 3) uint8."""
        from talk.artifacts.vae import decode_latents

        return decode_latents(self.vae, latents, scaling_factor=self.scale)


def preview_grid(decode: Decoder, batch: dict, sampled: torch.Tensor) -> np.ndarray:
    """Rows of [reference | sampled frames | ground-truth frames] (uint8 image)."""
    b, f = sampled.shape[:2]
    ref = decode(batch["ref"])  # (B, H, W, 3)
    gen = decode(sampled.flatten(0, 1)).reshape(b, f, *ref.shape[1:])
    real = decode(batch["target"].flatten(0, 1)).reshape(b, f, *ref.shape[1:])
    rows = [np.concatenate([ref[i], *gen[i], *real[i]], axis=1) for i in range(b)]
    return np.concatenate(rows, axis=0)


def latent_psnr(sampled: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of sampled vs ground-truth latents, peak = the target's range."""
    mse = float((sampled - target).pow(2).mean())
    peak = float(target.max() - target.min())
    return round(10 * np.log10(peak**2 / max(mse, 1e-12)), 3)


# --------------------------------------------------------------------------------------------
# Data


def open_split(cfg, params, split: str):
    """The latent window dataset of one split (talk/data/windows.py), or None when the split is empty.

    The cache must have been made with the VAE in ``cfg.vae`` (identity checked).
    """
    from talk.artifacts.vae import vae_identity
    from talk.data.clips import read_manifest
    from talk.data.windows import LatentDataset

    if split not in set(read_manifest(Path(cfg.crops))["split"]):
        return None
    return LatentDataset(
        cfg.latents,
        cfg.audio_features,
        cfg.crops,
        splits=(split,),
        target_frames=params.model.target_frames,
        motion_frames=params.model.motion_frames,
        audio_window=params.model.audio_window,
        seed=params.base.seed,
        vae_identity=vae_identity(cfg.vae),
    )


def open_splits(cfg, params, stage: str):
    train_set = open_split(cfg, params, "train")
    if train_set is None or len(train_set) == 0:
        raise TalkError(f"no train clips in {Path(cfg.crops) / 'manifest.csv'}")
    val_set = open_split(cfg, params, "val")
    if val_set is None or len(val_set) == 0:
        runtime.log.warning("%s: no val clips; validation figures and previews use the train split", stage)
        return train_set, train_set, "train"
    return train_set, val_set, "val"


def make_sampler(dataset, seed: int):
    from talk.data.windows import InfiniteSampler

    return lambda start: InfiniteSampler(dataset, seed=seed, start_idx=start)


def shapes_of(item: dict) -> dict:
    return {k: tuple(item[k].shape) for k in ("ref", "target", "motion", "audio") if k in item}


def fixed_batch(dataset, n: int, offset: int = 0) -> dict:
    """A deterministic batch: evenly spaced items of the dataset (previews, validation)."""
    import torch

    n = min(n, len(dataset))
    idx = np.linspace(0, len(dataset) - 1, n).round().astype(int) if n else []
    idx = [(int(i) + offset) % len(dataset) for i in idx]
    return torch.utils.data.default_collate([dataset[i] for i in idx])


class LiveLog:
    """dvclive on the main process: train curves, validation, preview images."""

    def __init__(self, folder: Path, resume: bool, enabled: bool):
        self.live = None
        if enabled:
            from dvclive import Live

            self.live = Live(dir=str(folder), resume=resume, save_dvc_exp=False, dvcyaml=False, report=None)
            Path(self.live.plots_dir, "images").mkdir(parents=True, exist_ok=True)  # a declared plots output

    def metrics(self, step: int, values: dict, prefix: str) -> None:
        if self.live is None:
            return
        self.live.step = step
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.live.log_metric(f"{prefix}/{k}", float(v))
        self.live.sync()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.live is None:
            return
        self.live.step = step
        self.live.log_image(f"{name}/{step:07d}.png", image)

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


# --------------------------------------------------------------------------------------------
# The training run (data-agnostic core, used by run() and the tests)


def train(
    cfg: Config,
    spec: DenoiserSpec,
    bank: nn.Module,
    embeddings: ClipEmbeddings,
    train_set,
    val_set,
    make_sampler_fn,
    seed: int,
    device: str = "auto",
    decoder_path: Path | None = None,
    extra_config: dict | None = None,
    export: bool = True,
    on_export=None,
    val_split: str = "val",
) -> dict:
    """Train (resuming when a checkpoint of this configuration exists), export ``cfg.out``."""
    from talk.models.denoiser import make_schedule

    backbone = pretrained_backbone(spec)
    runtime.seed_everything(seed)
    model = build_denoiser(spec, bank, backbone)
    stage = stage_fields(cfg, exclude=("out", "work", "latents", "audio_features", "crops", "prior", "vae", "val_batches", "preview"))
    run_config = {"stage": stage, "spec": model.spec.to_dict(), "bank": _bank_config(bank), **(extra_config or {})}
    trainer = Trainer(cfg, model, cfg.work / "checkpoints", run_config, seed, device, name="diffusion")
    schedule = make_schedule(model.spec).to(trainer.device)
    objective = Objective(cfg, schedule, embeddings, style=model.cond.style is not None)
    live = LiveLog(cfg.work / "live", resume=trainer.resumed_from is not None, enabled=trainer.is_main and export)

    n_params = sum(p.numel() for p in model.parameters())
    runtime.log.info("train_diffusion: %s backbone, %.2fM parameters, %d train / %d val windows, device %s, steps %d→%d",
                     spec.denoiser.backbone, n_params / 1e6, len(train_set), len(val_set), trainer.device,
                     trainer.step, cfg.steps)

    decode = None
    preview_batch = None
    if export and cfg.preview.samples and trainer.is_main:
        preview_batch = trainer_batch(fixed_batch(val_set, cfg.preview.samples), trainer.device)
        if decoder_path is not None:
            decode = Decoder(decoder_path, trainer.device)
    preview_stats: dict = {}

    def do_preview(step: int) -> None:
        if preview_batch is None:
            return
        sampled = sample_latents(trainer.final_model, preview_batch, objective, cfg.preview, seed, trainer.device)
        preview_stats["latent_psnr"] = latent_psnr(sampled, preview_batch["target"])
        live.metrics(step, {"latent_psnr": preview_stats["latent_psnr"]}, "preview")
        if decode is not None:
            live.image(step, "samples", preview_grid(decode, preview_batch, sampled))

    def on_step(step: int) -> None:
        if cfg.preview.every and step % cfg.preview.every == 0 and step < cfg.steps:
            do_preview(step)

    last: dict = {}

    def on_log(step: int, values: dict) -> None:
        last.update(values)
        live.metrics(step, values, "train")

    batches = trainer.batches(train_set, make_sampler_fn(train_set))
    timing = trainer.fit(batches, objective, on_log=on_log, on_step=on_step, description="train_diffusion")
    if not export:
        return {"trainer": trainer, "timing": timing}

    metrics: dict[str, Any] = {"steps": trainer.step, "parameters": n_params, **timing}
    if last:
        metrics["train"] = {k: round(v, 6) for k, v in last.items()}  # the last logged window of steps
    if trainer.is_main:
        val_batches = [trainer_batch(fixed_batch(val_set, cfg.batch_size, i * cfg.batch_size), trainer.device)
                       for i in range(cfg.val_batches)] if len(val_set) else []
        if val_batches:
            metrics["val"] = {"split": val_split,
                              **validation_loss(trainer.final_model, objective, val_batches, seed, trainer.device)}
            live.metrics(trainer.step, {"loss": metrics["val"]["loss"], **metrics["val"]["per_t"]}, "val")
        do_preview(trainer.step)
        if preview_stats:
            metrics["preview"] = {"sampler": cfg.preview.sampler, "steps": cfg.preview.steps, **preview_stats}
        live.end()
        with atomic_dir(cfg.out) as tmp:
            save_denoiser(trainer.final_model, tmp, {"trained": {"stage": "train_diffusion", "steps": trainer.step, "seed": seed}})
            if on_export is not None:
                on_export(tmp)
        atomic_write_text(cfg.work / "metrics.json", json.dumps(to_plain(metrics), indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return {"trainer": trainer, "metrics": metrics}


def trainer_batch(batch: dict, device) -> dict:
    from talk.training.trainer import to_device

    return to_device(batch, device)


def _summary(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title="train_diffusion")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("steps", "parameters", "seconds", "samples_per_s"):
        if metrics.get(k) is not None:
            table.add_row(k, str(metrics[k]))
    for k, v in metrics.get("val", {}).get("per_t", {}).items():
        table.add_row(f"val loss {k}", f"{v:.4f}")
    if "preview" in metrics:
        table.add_row("preview latent PSNR (dB)", str(metrics["preview"]["latent_psnr"]))
    runtime.console.print(table)


def run(params) -> Path:
    """Train the denoiser on ``train_diffusion.latents`` etc.; write ``out`` and ``work``."""
    from talk.artifacts.prior import load_prior

    cfg: Config = params.train_diffusion
    seed = params.base.seed
    prior = load_prior(cfg.prior)
    bank = copy.deepcopy(prior.bank).train()
    embeddings = ClipEmbeddings(Path(cfg.prior) / "clip_embeddings.npz")
    if embeddings.emotion_dim != bank.cfg.emb_dim:
        raise TalkError(f"{embeddings.path}: embeddings of width {embeddings.emotion_dim}, the bank takes {bank.cfg.emb_dim}")
    train_set, val_set, val_split = open_splits(cfg, params, "train_diffusion")
    spec = make_spec(params.model, shapes_of(train_set[0]), bank.cfg, embeddings.style_dim)
    started = time.time()
    result = train(cfg, spec, bank, embeddings, train_set, val_set, lambda d: make_sampler(d, seed), seed,
                   params.base.device, decoder_path=Path(cfg.vae),
                   on_export=lambda tmp: params.write_resolved(tmp / "params.yaml", ["base", "model", "train_diffusion"]),
                   val_split=val_split)
    if result["trainer"].is_main:
        _summary(result["metrics"])
        runtime.log.info("train_diffusion: %.0f s, wrote %s", time.time() - started, cfg.out)
    return Path(cfg.out)
