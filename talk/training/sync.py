"""Training the talk lip-sync expert (stage `train_sync`; Wav2Lip §3.1's / LatentSync's SyncNet idea).

A window of W mouth crops (the lower half of the aligned face crop, crop_align's frames.mp4)
centred on frame u and the Whisper window centred on the same frame (audio_features' cache: the
very window the denoiser is conditioned on for frame u) are embedded by ``models.syncnet.
SyncExpert``; a sigmoid of their scaled cosine says "in sync". Each training item is one mouth
window with three audio windows: its own (positive), the same clip's shifted by ``min_shift`` ..
``max_shift`` frames either way (negative: the lips of the right speaker at the wrong time), and
another clip's (negative). Binary cross-entropy, the positive weighing as much as both negatives,
``other_share`` of that on the other clip's audio (default 0: on the pipeline's clips, other-clip
negatives taught the expert to tell clips apart, not sync; docs/findings.md).

Audio: Whisper states rather than a mel window because (1) audio_features already caches them
for every clip (nothing new to decode or store), (2) a train_diffusion batch carries exactly this
window per target frame, so the expert scores the denoiser's predictions with no new data path
(``sync_weight``), and (3) render and evaluate compute or read the same features.

Data: every training clip (the synthetic MEAD-layout clips, whose mouths follow loudness, and the
real talking videos of data/sources/wild, the true lip motion); the val clips give the figures in
``<paths.sync>/metrics.json``: pair accuracy (chance 0.5), how often the in-sync audio is closer
than the shifted one, and Sync-C / Sync-D analogues (talk expert) of the val clips in sync and
with their audio shifted by ``eval_shift`` frames.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.params import rng, to_plain
from talk.models.syncnet_config import SyncExpertConfig
from talk.training.trainer import LoopConfig, StepResult, Trainer, loop_field

if TYPE_CHECKING:
    import torch

    from talk.models.syncnet import SyncExpert


@dataclasses.dataclass(frozen=True)
class TrainSyncConfig:
    """The ``train_sync`` section (``paths.crops`` and ``paths.audio_features`` in, ``paths.sync`` out)."""

    loop: LoopConfig = loop_field(steps=300, batch_size=32, lr=2e-3, weight_decay=0.01, warmup_steps=20,
                                  lr_schedule="cosine", grad_clip=1.0, ema_decay=0.0, checkpoint_every=100,
                                  keep_checkpoints=2, log_every=10, workers=0)  # optimiser, schedule, checkpoints
    model: SyncExpertConfig = dataclasses.field(default_factory=SyncExpertConfig)  # the expert's sizes
    min_shift: int = dataclasses.field(default=5, metadata=rng(1))  # frames: a shifted negative is at least this far from the positive
    max_shift: int = dataclasses.field(default=25, metadata=rng(1))  # frames: and at most this far
    other_share: float = dataclasses.field(default=0.0, metadata=rng(0.0, 1.0))  # share of the negatives' weight on other clips' audio (the rest: the same clip shifted, Wav2Lip's only negative)
    max_clips: int = dataclasses.field(default=0, metadata=rng(0))  # training clips read (seeded subset; 0 = all)
    wild_repeat: int = dataclasses.field(default=4, metadata=rng(1))  # the real talking videos' windows (subset wild: the true lip motion) count this many times per epoch
    val_windows: int = dataclasses.field(default=512, metadata=rng(0))  # val windows scored for the pair accuracy (evenly spread)
    max_offset: int = dataclasses.field(default=5, metadata=rng(1))  # frames: +- offset search of the Sync-C / Sync-D analogues
    eval_shift: int = dataclasses.field(default=15, metadata=rng(1))  # frames: audio shift of the "shifted" control in metrics.json

    def validate(self) -> None:
        if self.max_shift < self.min_shift:
            raise TalkError(f"train_sync.max_shift ({self.max_shift}) is below train_sync.min_shift ({self.min_shift})")
        if self.eval_shift <= self.max_offset:
            raise TalkError(f"train_sync.eval_shift ({self.eval_shift}) must exceed train_sync.max_offset "
                            f"({self.max_offset}): a shift inside the offset search is found, not penalised")


# --------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class SyncClip:
    """One clip's mouth crops and Whisper states, in memory."""

    clip_id: str
    speaker: str
    subset: str  # the manifest's subset: mead (synthetic: the mouth follows loudness) or wild (real videos)
    mouths: np.ndarray  # (T, 3, h, 2h) uint8
    audio: np.ndarray  # (2T', L, D) float16 Whisper states (T' ~ T)


def read_clip(crops: Path, audio_features: Path, row, mouth_size: int) -> SyncClip:
    """A crop-manifest row -> its mouth crops (from frames.mp4) and its cached Whisper states."""
    import torch

    from talk.audio.features import check_feature_frames
    from talk.data.crops import clip_file
    from talk.media import io as media
    from talk.models.syncnet import mouth_crops

    frames = media.read_video(clip_file(crops, row, "frames.mp4"))  # (T, S, S, 3)
    path = Path(audio_features) / f"{row.clip_id}.npy"
    if not path.is_file():
        raise TalkError(f"audio features of clip {row.clip_id} not found at {path}; run `talk audio-features`")
    audio = np.load(path, allow_pickle=False)
    if audio.ndim != 3:
        raise TalkError(f"{path}: expected (2T, L, D) features, got shape {audio.shape}; re-run `talk audio-features`")
    check_feature_frames(len(audio), len(frames), f"audio features of clip {row.clip_id}")
    with torch.no_grad():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        m = mouth_crops(x, mouth_size).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    return SyncClip(str(row.clip_id), str(row.speaker), str(getattr(row, "subset", "") or ""), m, audio.astype(np.float16))


def read_clips(crops: Path, audio_features: Path, split: str, cfg: TrainSyncConfig, seed: int,
               max_clips: int = 0) -> list[SyncClip]:
    """Every clip of ``split`` long enough for one window (a seeded subset of ``max_clips``)."""
    from talk.data.crops import read_manifest

    df = read_manifest(crops)
    df = df[(df["split"] == split) & (df["n_frames"] >= cfg.model.frames)].sort_values("clip_id", kind="stable")
    if max_clips and len(df) > max_clips:
        df = df.iloc[np.sort(np.random.default_rng([seed, 0x5C]).choice(len(df), max_clips, replace=False))]
    return [read_clip(crops, audio_features, row, cfg.model.mouth_size)
            for row in runtime.track(list(df.itertuples()), f"train_sync: reading {split} clips")]


def audio_window(clip: SyncClip, u: int, k: int) -> np.ndarray:
    """The k Whisper frames centred on video frame u (the denoiser's window), (k, L, D) float32."""
    from talk.data.windows import audio_window_indices

    idx = audio_window_indices(np.array([u]), k, len(clip.audio))[0]
    return np.asarray(clip.audio[idx], np.float32)


class SyncWindows:
    """Training items: (mouth window, in-sync audio, shifted audio, other clip's audio).

    Item i is (clip, centre frame u), u = W//2 .. T-1-W//2; its random draws come from a generator
    seeded by (seed, epoch, i), so items do not depend on order, batch size or resumption
    (``InfiniteSampler``'s (epoch, index) pairs are accepted as well as plain indices)."""

    def __init__(self, clips: list[SyncClip], cfg: TrainSyncConfig, seed: int, wild_repeat: int = 1):
        if not clips:
            raise TalkError("train_sync: no clips with enough frames for one window")
        self.clips, self.cfg, self.seed = clips, cfg, int(seed)
        self.half = cfg.model.frames // 2
        self.counts = np.array([max(0, len(c.mouths) - 2 * self.half) for c in clips])
        repeats = [wild_repeat if c.subset == "wild" else 1 for c in clips]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts * repeats)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Item -> (clip position, centre frame); a repeated clip's windows come round again."""
        c = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return c, int((index - self.offsets[c]) % self.counts[c]) + self.half

    def __getitem__(self, item) -> dict:
        import torch

        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (0, int(item))
        cfg, k = self.cfg, self.cfg.model.audio_window
        g = np.random.default_rng([self.seed, epoch, index])
        c, u = self.locate(index)
        clip = self.clips[c]
        n = len(clip.mouths)
        video = clip.mouths[u - self.half:u + self.half + 1]
        shifts = [s for s in range(cfg.min_shift, cfg.max_shift + 1) for s in (s, -s) if 0 <= u + s < n]
        other_c = int(g.integers(len(self.clips) - 1)) if len(self.clips) > 1 else 0
        other_c += other_c >= c and len(self.clips) > 1
        other = self.clips[other_c]
        other_u = int(g.integers(len(other.mouths)))
        other_audio = audio_window(other, other_u, k)
        shifted = audio_window(clip, u + int(shifts[int(g.integers(len(shifts)))]), k) if shifts else other_audio
        return {
            "video": torch.from_numpy(np.ascontiguousarray(video)),  # (W, 3, h, 2h) uint8
            "audio": torch.from_numpy(audio_window(clip, u, k)),  # (k, L, D)
            "shifted": torch.from_numpy(shifted),
            "other": torch.from_numpy(other_audio),
        }


# --------------------------------------------------------------------------------------------
# The objective


def pair_logits(model, batch: dict) -> dict[str, torch.Tensor]:
    """Logits of the three pairs of a batch: positive, shifted, other clip, each (B,)."""
    v = model.embed_video(batch["video"].float() / 255)
    return {name: model.logit(v, model.embed_audio(batch[name])) for name in ("audio", "shifted", "other")}


def pair_loss(logits: dict[str, torch.Tensor], other_share: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE with the positive weighing as much as both negatives together (``other_share`` of that
    on the other clip's audio); the pair accuracy."""
    import torch

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    pos, shifted, other = logits["audio"], logits["shifted"], logits["other"]
    loss = (bce(pos, torch.ones_like(pos)) + (1 - other_share) * bce(shifted, torch.zeros_like(shifted))
            + other_share * bce(other, torch.zeros_like(other)))
    acc = 0.5 * (pos > 0).float().mean() + 0.25 * ((shifted < 0).float().mean() + (other < 0).float().mean())
    return loss, {"loss": loss.item(), "acc": acc.item(), "rank_shift": (pos > shifted).float().mean().item()}


@dataclasses.dataclass
class SyncObjective:
    other_share: float = 0.0  # TrainSyncConfig.other_share

    def __call__(self, model, batch: dict, g, step: int) -> StepResult:
        loss, logs = pair_loss(pair_logits(model, batch), self.other_share)
        return StepResult(loss, logs)


def collate(items: list[dict]) -> dict:
    import torch

    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def pair_accuracy(model, windows: SyncWindows, n: int, batch: int = 64) -> dict:
    """Fixed draws (epoch 0) of ``n`` evenly spread val windows: pair accuracy (chance 0.5), the
    accuracy on positives / shifted / other-clip negatives, and P(in-sync logit > shifted logit)."""
    import torch

    idx = np.unique(np.linspace(0, len(windows) - 1, min(n, len(windows))).round().astype(int))
    out: dict[str, list] = {"audio": [], "shifted": [], "other": []}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            b = collate([windows[int(j)] for j in idx[i:i + batch]])
            for name, v in pair_logits(model, b).items():
                out[name].append(v)
    pos, shifted, other = (torch.cat(out[k]) for k in ("audio", "shifted", "other"))
    p, s, o = (pos > 0).float().mean().item(), (shifted < 0).float().mean().item(), (other < 0).float().mean().item()
    return {"accuracy": round(0.5 * p + 0.25 * (s + o), 4), "positive": round(p, 4), "shifted": round(s, 4),
            "other_clip": round(o, 4), "rank_shift": round((pos > shifted).float().mean().item(), 4),
            "windows": int(len(idx)), "chance": 0.5}


def sync_control(model, clips: list[SyncClip], max_offset: int, shift: int) -> dict:
    """Sync-C / Sync-D analogues (talk expert) of clips in sync and with their audio delayed by
    ``shift`` frames (the mouth of frame u against the audio of frame u - shift)."""
    from talk.models.syncnet import expert_sync_scores

    rows: dict[str, list] = {"in_sync": [], "shifted": []}
    for clip in clips:
        n = min(len(clip.mouths), len(clip.audio) // 2)
        mouths = clip.mouths[:n].astype(np.float32) / 255
        if n - shift >= model.cfg.frames + 2 * max_offset:
            rows["in_sync"].append(expert_sync_scores(model, mouths, clip.audio[:2 * n], max_offset))
            rows["shifted"].append(expert_sync_scores(model, mouths[shift:], clip.audio[:2 * (n - shift)], max_offset))
    out = {}
    for name, scores in rows.items():
        if scores:
            out[name] = {"sync_c": round(float(np.median([s["sync_c"] for s in scores])), 4),
                         "sync_d": round(float(np.median([s["sync_d"] for s in scores])), 4),
                         "abs_offset": round(float(np.mean([abs(s["offset"]) for s in scores])), 3),
                         "clips": len(scores)}
    return out


# --------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainSyncConfig, train_clips: list[SyncClip], val_clips: list[SyncClip], seed: int, out: Path,
          device: str = "cpu", on_export=None) -> dict:
    """Fit the expert (resuming from ``out``/checkpoints), score it on ``val_clips``, export ``out``."""
    from talk.artifacts.sync import save_expert
    from talk.models.syncnet import SyncExpert
    from talk.data.windows import InfiniteSampler
    from talk.training.trainer import export_dir

    shape = train_clips[0].audio.shape[1:]
    if shape != (cfg.model.audio_layers, cfg.model.audio_dim):
        raise TalkError(f"the audio features have (L, D) = {tuple(shape)} per frame but train_sync.model has "
                        f"audio_layers={cfg.model.audio_layers}, audio_dim={cfg.model.audio_dim}")
    runtime.seed_everything(seed)
    model = SyncExpert(cfg.model)
    run_config = {"stage": {k: v for k, v in to_plain(cfg).items() if k not in ("loop", "val_windows", "eval_shift")},
                  "clips": [c.clip_id for c in train_clips]}
    trainer = Trainer(cfg.loop, model, Path(out) / "checkpoints", run_config, seed, device, name="sync", stage="train-sync")
    windows = SyncWindows(train_clips, cfg, seed, cfg.wild_repeat)
    runtime.log.info("train_sync: %d train clips, %d windows, %.2fM parameters, steps %d→%d", len(train_clips),
                     len(windows), sum(p.numel() for p in model.parameters()) / 1e6, trainer.step, cfg.loop.steps)
    timing = trainer.fit(trainer.batches(windows, lambda start: InfiniteSampler(windows, seed=seed, start_idx=start), collate=collate), SyncObjective(cfg.other_share),
                         description="train_sync")
    expert = trainer.final_model.eval()
    metrics: dict[str, Any] = {"steps": trainer.step, **timing, "train_clips": len(train_clips),
                               "train_windows": len(windows)}
    last = [h for h in trainer.history if "acc" in h]
    if last:
        metrics["train"] = {k: round(float(last[-1][k]), 4) for k in ("loss", "acc", "rank_shift")}
    if val_clips:
        metrics["val"] = pair_accuracy(expert.cpu(), SyncWindows(val_clips, cfg, seed), cfg.val_windows)
        metrics["val"]["clips"] = len(val_clips)
        metrics["val_sync"] = sync_control(expert, val_clips, cfg.max_offset, cfg.eval_shift)
        wild = [c for c in val_clips if c.subset == "wild"]
        if wild:  # the real talking videos alone: the true lip motion
            metrics["val_wild"] = pair_accuracy(expert, SyncWindows(wild, cfg, seed), cfg.val_windows)
            metrics["val_wild"]["clips"] = len(wild)
            metrics["val_wild_sync"] = sync_control(expert, wild, cfg.max_offset, cfg.eval_shift)
    else:
        runtime.log.warning("train_sync: no val clips; metrics.json has no val figures")
    if trainer.is_main:
        with export_dir(out) as tmp:
            save_expert(expert, tmp, {"trained": {"stage": "train_sync", "steps": trainer.step, "seed": seed},
                                      "max_offset": cfg.max_offset})
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if on_export is not None:
                on_export(tmp)
    return {"trainer": trainer, "metrics": metrics, "expert": expert}


def run_stage(params, cfg: TrainSyncConfig, on_export=None) -> dict:
    """The stage on the pipeline's folders: train / val clips of ``paths.crops``, ``paths.sync`` out."""
    paths, seed = params.paths, params.base.seed
    t0 = time.perf_counter()
    train_clips = read_clips(paths.crops, paths.audio_features, "train", cfg, seed, cfg.max_clips)
    val_clips = read_clips(paths.crops, paths.audio_features, "val", cfg, seed)
    read_s = time.perf_counter() - t0
    result = train(cfg, train_clips, val_clips, seed, paths.sync, params.base.device, on_export)
    result["metrics"]["read_seconds"] = round(read_s, 2)
    return result


def summary(metrics: dict):
    """The run's figures as a rich table."""
    from rich.table import Table

    table = Table(title="train_sync: the lip-sync expert")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("steps", "seconds", "train_clips", "train_windows"):
        table.add_row(key, str(metrics.get(key)))
    for key, v in metrics.get("val", {}).items():
        table.add_row(f"val {key}", str(v))
    for key in ("val_wild",):
        for k in ("accuracy", "rank_shift", "clips"):
            if k in metrics.get(key, {}):
                table.add_row(f"{key} {k}", str(metrics[key][k]))
    for key in ("val_sync", "val_wild_sync"):
        for name, d in metrics.get(key, {}).items():
            table.add_row(f"{key} {name}: Sync-C / Sync-D (talk expert)",
                          f"{d['sync_c']} / {d['sync_d']} (|offset| {d['abs_offset']})")
    return table


# --------------------------------------------------------------------------------------------
# The expert as a training loss of the denoiser (train_diffusion.objective.sync_weight)


class SyncLoss:
    """Wav2Lip's expert loss on the denoiser's predictions: the predicted clean latents x̂0
    (B, F, C, h, w) are decoded by the (frozen) VAE, their mouths cut, and every window of W
    consecutive predicted frames is scored by the (frozen) expert against the Whisper window of
    its centre frame (the batch's ``audio``, (B, F, k, L, D)); the loss is -log P(in sync),
    averaged over the windows of samples whose audio was not dropped. Gradients flow through the
    decoder into x̂0. Needs F >= W (a clip backbone; with the frame backbone, F = 1, an expert
    of ``train_sync.model.frames: 1``). Costs one decoder forward + backward of B x F frames per
    step (benchmarks/sync.py)."""

    def __init__(self, expert_path: Path, vae_path: Path, target_frames: int, audio_window: int, device):
        from talk.artifacts.sync import load_expert
        from talk.artifacts.vae import load_vae

        self.expert = load_expert(expert_path, device)
        w = self.expert.cfg.frames
        if target_frames < w:
            raise TalkError(f"train_diffusion.objective.sync_weight > 0: the expert in {expert_path} scores windows of "
                            f"{w} frames but the denoiser predicts model.target_frames={target_frames} at a time; "
                            f"use a clip backbone with target_frames >= {w}, or an expert of train_sync.model.frames <= "
                            f"{target_frames}")
        if audio_window != self.expert.cfg.audio_window:
            raise TalkError(f"train_diffusion.objective.sync_weight > 0: the expert in {expert_path} takes "
                            f"{self.expert.cfg.audio_window} Whisper frames per window but model.audio_window is "
                            f"{audio_window}; retrain it with train_sync.model.audio_window: {audio_window}")
        self.vae, self.scale, _ = load_vae(vae_path, device)

    def __call__(self, x0_pred: torch.Tensor, audio: torch.Tensor, keep_audio: torch.Tensor) -> torch.Tensor:
        import torch

        from talk.models.syncnet import mouth_crops

        b, f = x0_pred.shape[:2]
        w = self.expert.cfg.frames
        x = self.vae.decode(x0_pred.flatten(0, 1).float() / self.scale).sample  # (B F, 3, H, W) in [-1, 1]
        mouths = mouth_crops(((x.clamp(-1, 1) + 1) / 2).reshape(b, f, *x.shape[1:]), self.expert.cfg.mouth_size)
        starts = range(f - w + 1)
        video = torch.cat([mouths[:, s:s + w] for s in starts])  # (B n, W, 3, h, 2h)
        aud = torch.cat([audio[:, s + w // 2] for s in starts])  # (B n, k, L, D)
        logits = self.expert.logit(self.expert.embed_video(video), self.expert.embed_audio(aud))
        keep = keep_audio.float().repeat(len(starts))
        per = torch.nn.functional.softplus(-logits)  # -log sigmoid
        return (per * keep).sum() / keep.sum().clamp_min(1)
