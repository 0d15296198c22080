"""Training the audio/emotion/style-conditioned latent denoiser (DICE-Talk §3, SVP §3.3; docs/method.md §1-2).

The target frame(s) of a latent window are noised (diffusers scheduler betas; ε or v targets,
min-SNR weights, offset noise), and the UNet sees the reference latent, M motion-frame latents,
per-frame Whisper windows, the clip's emotion embedding z ~ N(mu, σ²) from the prior (through the
Emotion Bank, trained jointly: its VQ loss is added) and, with style tokens on, the clip's style
embedding. Each condition is dropped on its own with its own probability so that rendering can
guide each separately. Here: the objective and its config (saved with the denoiser, so that
finetune_disc continues with it), validation per noise band, previews sampled with the render
settings (``SamplingConfig``, saved as inference.json), the dvclive log, the spec, and ``train``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.artifacts.denoiser import bank_config, build_denoiser, pretrained_backbone, save_denoiser
from talk.artifacts.prior import ClipEmbeddings
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_dir, atomic_write_text
from talk.core.params import rng, to_plain
from talk.inference.settings import SamplingConfig
from talk.training.trainer import LoopConfig, StepResult, Trainer, generator, loop_field, step_seed, to_device

if TYPE_CHECKING:
    import torch
    from torch import nn

    from talk.models.denoiser import DenoiserSpec, TalkDenoiser

T_BINS = 4  # noise-level bins of the validation loss (equal ranges of the schedule index)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The denoising objective (saved with the denoiser; finetune_disc continues with it)."""

    min_snr_gamma: float = dataclasses.field(default=5.0, metadata=rng(0.0))  # min-SNR-γ loss weighting (0: uniform)
    noise_offset: float = dataclasses.field(default=0.05, metadata=rng(0.0))  # offset-noise strength (0: off)
    drop_ref: float = dataclasses.field(default=0.05, metadata=rng(0.0, 1.0))  # P(reference + motion latents zeroed): reference guidance
    drop_motion: float = dataclasses.field(default=0.3, metadata=rng(0.0, 1.0))  # P(motion latents zeroed alone): the first window of a video has none
    drop_audio: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(audio tokens -> learned null tokens)
    drop_emotion: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(emotion tokens -> learned null tokens)
    drop_style: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # P(style tokens -> learned null tokens)
    vq_weight: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the Emotion Bank's VQ loss
    sample_embeddings: bool = True  # z ~ N(mu, σ²) of the clip per sample (false: z = mu)
    # issue 14 levers (benchmarks/ablation.py rows); the defaults leave the objective as it was
    context_aug: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # max σ of the noise on the reference + motion latents, σ ~ U(0, max) per sample, told to the UNet (SVD / Hallo); 0 = off; render: sampling.context_aug
    w_face: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # loss weight of latent pixels in the face box (dlib-68 landmarks of the crops; Hallo's face mask); 1 = unweighted
    w_lip: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # loss weight of latent pixels in the mouth box (Hallo's lip mask); 1 = unweighted
    residual: bool = False  # denoise the change from the reference latent (target − ref) instead of the frame

    @property
    def weighted(self) -> bool:
        """The loss is face / lip weighted (the data then carries landmarks)."""
        return self.w_face != 1.0 or self.w_lip != 1.0
    sync_weight: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # weight of the lip-sync expert's loss on decoded x̂0 (paths.sync, talk/training/sync.py SyncLoss; 0: off)


@dataclasses.dataclass(frozen=True)
class PreviewConfig:
    """Sampled frames logged to dvclive while training (sampled with the stage's SamplingConfig)."""

    every: int = dataclasses.field(default=250, metadata=rng(0))  # steps between previews (0: only at the end)
    samples: int = dataclasses.field(default=3, metadata=rng(0))  # val windows sampled (0: no previews)


@dataclasses.dataclass(frozen=True)
class TrainDiffusionConfig:
    """The ``train_diffusion`` section (paths: ``paths.latents`` etc. in, ``paths.diffusion`` and
    ``paths.diffusion_train`` out)."""

    loop: LoopConfig = loop_field(steps=2000, batch_size=16, lr=5e-4, weight_decay=0.01, warmup_steps=30,
                                  lr_schedule="constant", grad_clip=1.0, ema_decay=0.99, checkpoint_every=250,
                                  keep_checkpoints=2, log_every=10, workers=0)  # optimiser, schedule, EMA, checkpoints
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)  # the denoising objective
    val_batches: int = dataclasses.field(default=2, metadata=rng(0))  # val batches for the per-noise-level loss
    preview: PreviewConfig = dataclasses.field(default_factory=PreviewConfig)  # preview samples in dvclive
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)  # render settings: previews use them, saved as inference.json


# --------------------------------------------------------------------------------------------
# The spec


def make_spec(model_params, shapes: dict, bank_cfg, style_dim: int, objective: ObjectiveConfig | None = None) -> DenoiserSpec:
    """The denoiser's spec from ``params.model``, the data's shapes (read from a sample) and the
    objective's architecture levers (context noise embedding, residual target)."""
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
        context_aug=bool(objective is not None and objective.context_aug > 0),
        residual=bool(objective is not None and objective.residual),
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
    sync: Any = None  # talk.training.sync.SyncLoss when cfg.sync_weight > 0

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
        motion = motion if motion is not None and motion.shape[1] else None
        cond = dict(ref=batch["ref"], motion=motion, audio=batch["audio"], emotion=emotion, style=style, keep=keep)
        if cfg.context_aug > 0:  # noise-augmented context: σ ~ U(0, max) per sample (0 when not dropping: validation, previews)
            ctx = batch["ref"][:, None] if motion is None else torch.cat([batch["ref"][:, None], motion], dim=1)
            cond["aug"] = torch.rand(b, generator=g, device=device) * cfg.context_aug if drop else ctx.new_zeros(b)
            cond["aug_noise"] = torch.randn(ctx.shape, generator=g, device=device)
        return cond

    def __call__(self, model, batch: dict, g, step: int) -> StepResult:
        import torch

        from talk.models.diffusion import sample_noise, training_loss

        x0 = batch["target"]  # (B, F, C, h, w)
        device = x0.device
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=g, device=device)
        noise = sample_noise(x0.shape, g, device, self.cfg.noise_offset)
        cond = self.conditions(batch, g, device)
        weights = None
        if self.cfg.weighted:  # face / lip weighted loss (the data carries the target frames' landmarks)
            from talk.models.diffusion import face_lip_weights

            weights = face_lip_weights(batch["landmarks"], x0.shape[-2], x0.shape[-1], self.cfg.w_face, self.cfg.w_lip)
        out = training_loss(model, self.schedule, x0, noise, t, cond, self.cfg.min_snr_gamma, pixel_weight=weights)
        loss = out.loss + self.cfg.vq_weight * out.vq_loss
        logs = {"loss": out.loss.detach(), "vq_loss": out.vq_loss.detach()}  # read back by the trainer
        if self.sync is not None and self.cfg.sync_weight > 0:
            sync_loss = self.sync(out.x0_pred, batch["audio"], cond["keep"]["audio"])
            loss = loss + self.cfg.sync_weight * sync_loss
            logs["sync_loss"] = sync_loss.detach()
        return StepResult(loss, logs)


def t_bins(num_timesteps: int, bins: int = T_BINS) -> list[tuple[int, int]]:
    edges = np.linspace(0, num_timesteps, bins + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def validation_loss(model, objective: Objective, batches, seed: int, device) -> dict:
    """Unweighted denoising MSE per noise-level bin on fixed draws (all conditions kept)."""
    import torch

    from talk.models.diffusion import sample_noise, training_loss

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


def guided_denoiser(karras, sampling: SamplingConfig, style: bool):
    """The sampler's D(x, σ, **cond): multi-branch guidance on the steps of the guidance interval,
    the plain all-conditions denoiser on the others (as `talk render` samples)."""
    from talk.models.sampling import GuidedDenoiser

    scales = {"ref": sampling.guidance_ref, "audio": sampling.guidance_audio, "emotion": sampling.guidance_emotion}
    if style and sampling.guidance_style != 1.0:
        scales["style"] = sampling.guidance_style
    return GuidedDenoiser(karras, scales, steps=sampling.guided_steps())


def sample_latents(model: TalkDenoiser, batch: dict, objective: Objective, sampling: SamplingConfig, seed: int,
                   device) -> torch.Tensor:
    """Sample target windows for a batch with per-sample seeds and the render settings."""
    import torch

    from talk.models.diffusion import KarrasDenoiser
    from talk.models.sampling import get_sigmas, per_sample_noise, sample

    schedule = objective.schedule
    g = generator(step_seed(seed, 0, 0, "preview"), device)
    cond = objective.conditions(batch, g, device, drop=False)
    cond["emotion"] = objective.embeddings.draw(batch["clip_id"], "emotion", g, device, sample=False)
    if objective.style:
        cond["style"] = objective.embeddings.draw(batch["clip_id"], "style", g, device, sample=False)
    x0 = batch["target"]
    seeds = [step_seed(seed, i, 0, "preview-noise") % 2**31 for i in range(x0.shape[0])]
    noise = per_sample_noise(x0.shape, seeds, device)
    sigmas = get_sigmas(schedule, sampling.steps, sampling.sigmas, device=device)
    if "aug" in cond:  # noise-augmented context: the render's σ
        cond["aug"] = torch.full_like(cond["aug"], sampling.context_aug)
    if model.spec.residual:  # start from the reference + noise (sample() multiplies by σ_max)
        noise = noise + batch["ref"][:, None] / sigmas[0]
    denoiser = guided_denoiser(KarrasDenoiser(model, schedule), sampling, objective.style)
    model.eval()
    with torch.no_grad():
        return sample(denoiser, noise, sigmas, sampling.sampler, cond, generator=generator(seed, device))


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


class Previewer:
    """Preview samples of fixed val windows: latent PSNR and a decoded image grid in dvclive."""

    def __init__(self, live, val_set, samples: int, sampling: SamplingConfig, objective: Objective, seed: int,
                 device, decoder_path: Path | None):
        self.live, self.sampling, self.objective, self.seed, self.device = live, sampling, objective, seed, device
        self.batch = to_device(fixed_batch(val_set, samples), device) if samples else None
        self.decode = Decoder(decoder_path, device) if self.batch is not None and decoder_path is not None else None
        self.stats: dict = {}

    def __call__(self, model, step: int) -> None:
        if self.batch is None:
            return
        sampled = sample_latents(model, self.batch, self.objective, self.sampling, self.seed, self.device)
        self.stats["latent_psnr"] = latent_psnr(sampled, self.batch["target"])
        self.live.metrics(step, {"latent_psnr": self.stats["latent_psnr"]}, "preview")
        if self.decode is not None:
            self.live.image(step, "samples", preview_grid(self.decode, self.batch, sampled))

    def summary(self) -> dict:
        return {"sampler": self.sampling.sampler, "steps": self.sampling.steps, **self.stats} if self.stats else {}


# --------------------------------------------------------------------------------------------
# Data


def open_split(paths, params, split: str, landmarks: bool = False):
    """The latent window dataset of one split (talk/data/windows.py), or None when the split is empty;
    ``landmarks``: items carry the target frames' landmarks (the face / lip weighted loss).

    The cache must have been made with the VAE in ``paths.vae`` (identity checked).
    """
    from talk.artifacts.vae import vae_identity
    from talk.data.crops import read_manifest
    from talk.data.windows import LatentDataset

    if split not in set(read_manifest(Path(paths.crops))["split"]):
        return None
    return LatentDataset.from_model(params.model, paths.latents, paths.audio_features, paths.crops, splits=(split,),
                                    seed=params.base.seed, vae_identity=vae_identity(paths.vae), landmarks=landmarks)


def open_splits(paths, params, stage: str, landmarks: bool = False):
    """(train set, val set, val split name): the train split stands in for a missing val split."""
    train_set = open_split(paths, params, "train", landmarks)
    if train_set is None or len(train_set) == 0:
        raise TalkError(f"no train clips in {Path(paths.crops) / 'manifest.csv'}")
    val_set = open_split(paths, params, "val", landmarks)
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


def val_batches(val_set, n: int, batch_size: int, device) -> list[dict]:
    """``n`` fixed validation batches of ``batch_size`` windows, on ``device``."""
    if not len(val_set):
        return []
    return [to_device(fixed_batch(val_set, batch_size, i * batch_size), device) for i in range(n)]


def load_embeddings(prior: Path, emotion_dim: int, stage: str) -> ClipEmbeddings:
    """The prior's clip_embeddings.npz, checked against the Emotion Bank's input width."""
    embeddings = ClipEmbeddings(Path(prior) / "clip_embeddings.npz")
    if embeddings.emotion_dim != emotion_dim:
        raise TalkError(f"{embeddings.path}: embeddings of width {embeddings.emotion_dim}, the bank takes {emotion_dim}"
                        + (" (re-run talk train-diffusion after the prior)" if stage == "finetune_disc" else ""))
    return embeddings


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


def write_metrics(path: Path, metrics: dict) -> None:
    atomic_write_text(path, json.dumps(to_plain(metrics), indent=2) + "\n")


def summary_table(title: str, rows: list[tuple[str, Any]]):
    """A two-column rich table of (metric, value) rows (None values left out)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        if v is not None:
            table.add_row(k, v if isinstance(v, str) else str(v))
    return table


# --------------------------------------------------------------------------------------------
# The training run (data-agnostic core, used by the stage and the tests)


def train(
    cfg: TrainDiffusionConfig,
    spec: DenoiserSpec,
    bank: nn.Module,
    embeddings: ClipEmbeddings,
    train_set,
    val_set,
    make_sampler_fn,
    seed: int,
    out: Path,
    work: Path,
    device: str = "auto",
    decoder_path: Path | None = None,
    extra_config: dict | None = None,
    export: bool = True,
    on_export=None,
    val_split: str = "val",
    sync_path: Path | None = None,
) -> dict:
    """Train (resuming when a checkpoint of this configuration exists); export the EMA weights,
    the objective and the render settings to ``out``; checkpoints, dvclive and metrics in ``work``.
    ``sync_path``: train_sync's expert, used when ``objective.sync_weight`` > 0."""
    from talk.models.denoiser import make_schedule

    backbone = pretrained_backbone(spec)
    runtime.seed_everything(seed)
    model = build_denoiser(spec, bank, backbone)
    run_config = {"stage": to_plain(cfg.objective), "spec": model.spec.to_dict(), "bank": bank_config(bank),
                  **(extra_config or {})}
    loop = cfg.loop
    trainer = Trainer(loop, model, work / "checkpoints", run_config, seed, device, name="diffusion", stage="train-diffusion")
    schedule = make_schedule(model.spec).to(trainer.device)
    objective = Objective(cfg.objective, schedule, embeddings, style=model.cond.style is not None,
                          sync=sync_loss(cfg.objective, spec, sync_path, decoder_path, trainer.device))
    live = LiveLog(work / "live", resume=trainer.resumed_from is not None, enabled=trainer.is_main and export)

    n_params = sum(p.numel() for p in model.parameters())
    runtime.log.info("train_diffusion: %s backbone, %.2fM parameters, %d train / %d val windows, device %s, steps %d→%d",
                     spec.denoiser.backbone, n_params / 1e6, len(train_set), len(val_set), trainer.device,
                     trainer.step, loop.steps)
    preview = Previewer(live, val_set, cfg.preview.samples if export and trainer.is_main else 0, cfg.sampling,
                        objective, seed, trainer.device, decoder_path)

    def on_step(step: int) -> None:
        if cfg.preview.every and step % cfg.preview.every == 0 and step < loop.steps:
            preview(trainer.final_model, step)

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
        val = val_batches(val_set, cfg.val_batches, loop.batch_size, trainer.device)
        if val:
            metrics["val"] = {"split": val_split, **validation_loss(trainer.final_model, objective, val, seed, trainer.device)}
            live.metrics(trainer.step, {"loss": metrics["val"]["loss"], **metrics["val"]["per_t"]}, "val")
        preview(trainer.final_model, trainer.step)
        if preview.summary():
            metrics["preview"] = preview.summary()
        live.end()
        with atomic_dir(out) as tmp:
            save_denoiser(trainer.final_model, tmp, {"trained": {"stage": "train_diffusion", "steps": trainer.step, "seed": seed},
                                                     "objective": to_plain(cfg.objective)})
            if on_export is not None:
                on_export(tmp)
        write_metrics(work / "metrics.json", metrics)
    trainer.accelerator.wait_for_everyone()
    return {"trainer": trainer, "metrics": metrics}


def sync_loss(objective: ObjectiveConfig, spec: DenoiserSpec, sync_path: Path | None, vae_path: Path | None, device):
    """The lip-sync expert loss (talk/training/sync.py) when ``sync_weight`` > 0, else None."""
    if objective.sync_weight <= 0:
        return None
    from talk.artifacts.sync import exists
    from talk.training.sync import SyncLoss

    if sync_path is None or not exists(sync_path) or vae_path is None:
        raise TalkError(f"train_diffusion.objective.sync_weight > 0 needs the lip-sync expert (no {sync_path}/config.json: "
                        "run `talk train-sync`) and the VAE to decode with")
    return SyncLoss(Path(sync_path), Path(vae_path), spec.target_frames, spec.audio_window, device)


def run_stage(params, cfg: TrainDiffusionConfig, write_settings) -> dict:
    """The stage on the pipeline's folders (``params.paths``): prior, latent windows, train, export."""
    from talk.artifacts.prior import load_prior

    paths, seed = params.paths, params.base.seed
    prior = load_prior(paths.prior)
    bank = copy.deepcopy(prior.bank).train()
    embeddings = load_embeddings(paths.prior, bank.cfg.emb_dim, "train_diffusion")
    train_set, val_set, val_split = open_splits(paths, params, "train_diffusion", landmarks=cfg.objective.weighted)
    spec = make_spec(params.model, shapes_of(train_set[0]), bank.cfg, embeddings.style_dim, cfg.objective)
    return train(cfg, spec, bank, embeddings, train_set, val_set, lambda d: make_sampler(d, seed), seed,
                 paths.diffusion, paths.diffusion_train, params.base.device, decoder_path=Path(paths.vae),
                 on_export=write_settings, val_split=val_split, sync_path=Path(paths.sync))


def summary(metrics: dict):
    """The run's figures as a rich table."""
    rows = [(k, metrics.get(k)) for k in ("steps", "parameters", "seconds", "samples_per_s")]
    rows += [(f"val loss {k}", f"{v:.4f}") for k, v in metrics.get("val", {}).get("per_t", {}).items()]
    if "preview" in metrics:
        rows.append(("preview latent PSNR (dB)", metrics["preview"].get("latent_psnr")))
    return summary_table("train_diffusion", rows)


def audio_settings(audio_features) -> dict:
    """The audio_features section minus its path fields: how the model's Whisper features were made."""
    return {k: v for k, v in to_plain(audio_features).items() if not isinstance(getattr(audio_features, k), Path)}


def write_settings(folder: Path, params, sampling: SamplingConfig) -> None:
    """``inference.json`` beside a denoiser: the render settings, the audio features' and the face
    crop's settings and the image size it was trained with (talk/inference/settings.py)."""
    from talk.inference import settings

    settings.write(folder, sampling, audio=audio_settings(params.audio_features), face=to_plain(params.crop_align.face),
                   image_size=params.model.image_size)
