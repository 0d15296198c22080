"""Pretraining the emotion / style prior and the Emotion Bank, before diffusion (DICE-Talk §3.1-3.2,
SVP §3.2; docs/method.md §1-2).

One probabilistic cross-modal embedder per head (``model.prior.heads``: emotion with cross-speaker
same-emotion positives, style with same-clip / same-speaker positives; models/prior.py) trains on
random windows of the train split with modality dropout, with the shared training loop
(talk/training/trainer.py) and early stopping on the val split; the Emotion Bank
(models/emotion_bank.py) is pretrained by vector quantisation on sampled emotion embeddings.
Then: whole-clip embeddings, linear probes (emotion on unseen speakers, identity leakage),
presets (moment-matched mixtures of the train clips' Gaussians) and the embedding plot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk.artifacts.prior import save_clip_embeddings, save_presets, save_prior
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_path
from talk.core.params import one_of, rng, to_plain
from talk.media.io import VIDEO_FPS
from talk.models.emotions import EMOTIONS
from talk.training.trainer import (
    EarlyStopping,
    LoopConfig,
    StepResult,
    Trainer,
    export_dir,
    loop_field,
    merged_history,
    step_seed,
)

if TYPE_CHECKING:
    import torch

    from talk.data.clips import ClipSet
    from talk.models.prior import PriorModel

FILES = ("config.json", "model.safetensors", "presets.safetensors", "clip_embeddings.npz", "metrics.json",
         "embeddings.png", "curves.tsv")


@dataclasses.dataclass(frozen=True)
class PretrainPriorConfig:
    """The ``pretrain_prior`` section (paths: ``paths.crops``, ``paths.audio_features`` in, ``paths.prior`` out)."""

    template: str = dataclasses.field(default="neutral", metadata=one_of("neutral", "all"))  # per-speaker landmark reference: mean of their neutral clips, or of all their clips
    template_dropout: float = dataclasses.field(default=0.2, metadata=rng(0.0, 1.0))  # P(a training window uses the population template), as `talk embed` does for unknown faces
    window: float = dataclasses.field(default=2.0, metadata=rng(0.2))  # s, training window cut at random from a clip
    samples: int = dataclasses.field(default=4, metadata=rng(1))  # K reparameterised samples per embedding (K x K pairs)
    kl_weight: float = dataclasses.field(default=1e-3, metadata=rng(0.0))  # weight of KL(N(mu, sigma) || N(0, I))
    level_target: float = dataclasses.field(default=0.8, metadata=rng(0.0, 1.0))  # match target of one emotion at two intensity levels
    modality_dropout: float = dataclasses.field(default=0.3, metadata=rng(0.0, 0.5))  # P(window is audio-only); the same P for video-only
    style_positive: str = dataclasses.field(default="clip", metadata=one_of("clip", "speaker"))  # style head positives: two windows of one clip, or of one speaker
    vq_weight: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the bank's VQ loss
    recon_weight: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # weight of the bank tokens' reconstruction of z
    restart_every: int = dataclasses.field(default=50, metadata=rng(0))  # steps between dead-code restarts (0: never)
    eval_every: int = dataclasses.field(default=25, metadata=rng(1))  # steps between validation losses (early stopping)
    patience: int = dataclasses.field(default=4, metadata=rng(1))  # validations without improvement before stopping
    probe_l2: float = dataclasses.field(default=1e-2, metadata=rng(0.0))  # L2 weight of the linear probes (standardised inputs)
    eval_batch: int = dataclasses.field(default=32, metadata=rng(1))  # clips per batch when embedding whole clips
    loop: LoopConfig = loop_field(steps=150, batch_size=16, lr=1e-3, weight_decay=0.01, warmup_steps=20,
                                  lr_schedule="constant", grad_clip=5.0, ema_decay=0.0, checkpoint_every=50,
                                  keep_checkpoints=2, log_every=1, workers=0)  # optimisation; batch_size: clips per step (two windows each)


def mixture_gaussian(mu: np.ndarray, logvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moment-matched single Gaussian of an equal-weight mixture: (n, E) x 2 -> (E,) x 2."""
    mean = mu.mean(0)
    var = np.exp(logvar).mean(0) + mu.var(0)
    return mean.astype(np.float32), np.log(np.maximum(var, 1e-12)).astype(np.float32)


def _to(batch: dict[str, np.ndarray], device) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def _modality_dropout(batch: dict, p: float, r: np.ndarray) -> dict:
    """Per window: audio-only with probability p, video-only with probability p (never neither);
    ``r`` (B,) uniform draws, one per window."""
    batch["audio_mask"][r < p] = False
    batch["visual_mask"][(r >= p) & (r < 2 * p)] = False
    return batch


@dataclasses.dataclass
class _Ids:
    emotion: torch.Tensor
    level: torch.Tensor
    speaker: torch.Tensor
    clip: torch.Tensor


def _ids(data: ClipSet, indices: list[int], device) -> _Ids:
    import torch

    clips = [data.clips[i] for i in indices]
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return _Ids(t([c.emotion for c in clips]), t([c.level for c in clips]),
                t([data.speaker_index[c.speaker] for c in clips]), t(list(indices)))


def _head_loss(model: PriorModel, head: str, mu, logvar, ids: _Ids, cfg: PretrainPriorConfig, generator, cross_speaker: bool = True):
    from talk.models.prior import emotion_pairs, style_pairs

    if head == "emotion":
        target, weight = emotion_pairs(ids.emotion, ids.level, ids.speaker, ids.clip, cfg.level_target, cross_speaker)
    else:
        target, weight = style_pairs(ids.speaker, ids.clip, cfg.style_positive)
    return model.losses[head](mu, logvar, target, weight, cfg.samples, generator)


def _val_loss(model: PriorModel, data: ClipSet, val: list[int], cfg: PretrainPriorConfig, n_frames: int, seed: int,
              device) -> float | None:
    """Contrastive loss (no KL) on the first and the last window of every val clip (two views, as in
    training), both modalities, fixed samples: deterministic. None without two val clips."""
    import torch

    if len(val) < 2:
        return None
    idx = val + val
    starts = [0] * len(val) + [max(0, data.clips[i].n_frames - n_frames) for i in val]
    batch = _to(data.batch(idx, starts, n_frames), device)
    ids = _ids(data, idx, device)
    # cross-speaker positives need two val speakers sharing an emotion; else allow same-speaker pairs
    same_emo = (ids.emotion[:, None] == ids.emotion[None]) & (ids.emotion[:, None] >= 0)
    cross = bool((same_emo & (ids.speaker[:, None] != ids.speaker[None])).any())
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        total = sum(_head_loss(model, h, *out[h], ids, cfg, gen, cross) for h in model.heads)
    model.train()
    return float(total)


class Windows:
    """Training items: position i of the clip pool -> two random windows of that clip (the two views of
    the contrastive objective), each with its template and modality-dropout draws, all seeded by
    (seed, epoch, i): the data order and draws resume exactly (``InfiniteSampler`` pairs)."""

    def __init__(self, data: ClipSet, pool: list[int], n_frames: int, cfg: PretrainPriorConfig, seed: int):
        self.data, self.pool, self.n, self.cfg, self.seed = data, pool, n_frames, cfg, seed

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, item) -> dict:
        epoch, index = item
        g = np.random.default_rng([self.seed, int(epoch), int(index), 7])
        clip = self.pool[int(index)]
        span = max(1, self.data.clips[clip].n_frames - self.n + 1)
        return {"clip": clip, "starts": [int(s) for s in g.integers(0, span, 2)],
                "population": [bool(x) for x in g.random(2) < self.cfg.template_dropout], "r": g.random(2).tolist()}

    def collate(self, items: list[dict]) -> dict:
        """B items -> one batch of 2B windows (the first views, then the second ones) and their ids."""
        import torch

        idx = [it["clip"] for it in items] * 2
        view = lambda key: [it[key][0] for it in items] + [it[key][1] for it in items]  # noqa: E731
        batch = self.data.batch(idx, view("starts"), self.n, view("population"))
        batch = _modality_dropout(batch, self.cfg.modality_dropout, np.array(view("r")))
        ids = _ids(self.data, idx, "cpu")
        return {**{k: torch.from_numpy(v) for k, v in batch.items()}, **{f"id_{k}": v for k, v in vars(ids).items()}}


def _loss_module(model: PriorModel, cfg: PretrainPriorConfig):
    """The prior inside an nn.Module whose forward is the whole training loss (heads + bank)."""
    from torch import nn

    class PriorLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.last_queries = None  # (B, Q, code_dim) of the last step: dead-code restarts draw from them

        def forward(self, batch: dict, generator) -> tuple:
            import torch.nn.functional as F

            from talk.models.prior import kl_standard_normal, sample_gaussian

            m = self.model
            ids = _Ids(*(batch[f"id_{k}"] for k in ("emotion", "level", "speaker", "clip")))
            out = m(**{k: batch[k] for k in ("audio", "audio_mask", "visual", "visual_mask")})
            loss, logs = 0.0, {}
            for h in m.heads:
                mu, logvar = out[h]
                lh = _head_loss(m, h, mu, logvar, ids, cfg, generator) + cfg.kl_weight * kl_standard_normal(mu, logvar)
                loss = loss + lh
                logs[f"loss_{h}"] = lh.item()
            mu, logvar = out[m.bank_head]
            z = sample_gaussian(mu.detach(), logvar.detach(), 1, generator)[0]  # (B, E): what the denoiser will see
            bank_out = m.bank(z)
            recon = F.mse_loss(m.bank.reconstruct(bank_out.tokens), z)
            loss = loss + cfg.vq_weight * bank_out.vq_loss + cfg.recon_weight * recon
            logs.update(vq=bank_out.vq_loss.item(), recon=recon.item(), perplexity=bank_out.perplexity.item())
            self.last_queries = bank_out.queries.detach()
            return loss, logs

    return PriorLoss()


def _objective(model, batch: dict, g, step: int) -> StepResult:
    loss, logs = model(batch, g)
    return StepResult(loss, logs)


def data_hash(data: ClipSet) -> str:
    """Identity of the clips trained on (a run resumes only on the data it started on)."""
    h = hashlib.sha256()
    for c in data.clips:
        h.update(f"{c.clip_id}/{c.speaker}/{c.emotion}/{c.level}/{c.split}/{c.n_frames}".encode())
        h.update(np.ascontiguousarray(np.nan_to_num(c.landmarks)).tobytes())
    return h.hexdigest()[:16]


def train(model: PriorModel, data: ClipSet, cfg: PretrainPriorConfig, seed: int, checkpoints: Path,
          device: str = "auto") -> dict:
    """Optimise ``model`` (resuming from ``checkpoints``), early-stopped on the val clips, and leave
    the best validated weights in it; returns a summary (steps, best step, curves). DICE-Talk §3.1-3.2."""
    from talk.data.windows import InfiniteSampler
    from talk.training.trainer import generator

    heads = model.heads
    pool = data.indices("train") if "style" in heads else data.indices("train", labelled=True)
    val = data.indices("val") if "style" in heads else data.indices("val", labelled=True)
    n_frames = max(1, round(cfg.window * VIDEO_FPS))
    loop = dataclasses.replace(cfg.loop, batch_size=min(cfg.loop.batch_size, len(pool)))
    stage = {k: v for k, v in to_plain(cfg).items() if k not in ("loop", "probe_l2", "eval_batch")}
    run_config = {"stage": stage, "prior": to_plain(model.prior_cfg), "bank": to_plain(model.bank_cfg), "data": data_hash(data)}
    stopper = EarlyStopping(every=cfg.eval_every, patience=cfg.patience)
    trainer = Trainer(loop, _loss_module(model, cfg), checkpoints, run_config, seed, device, name="prior",
                      stage="pretrain-prior", stopper=stopper)
    windows = Windows(data, pool, n_frames, cfg, seed)

    def on_step(step: int) -> None:  # dead-code restarts of the bank (DICE-Talk §3.2)
        net = trainer.unwrapped
        if cfg.restart_every and step % cfg.restart_every == 0:
            g = generator(step_seed(seed, step, 0, "restart"), trainer.device)
            queries = net.last_queries.reshape(-1, net.model.bank_cfg.code_dim)
            trainer.extra["restarts"] = trainer.extra.get("restarts", 0) + int(net.model.bank.restart_dead_codes(queries, g))

    def validate(net) -> float | None:
        return _val_loss(net.model, data, val, cfg, n_frames, seed, trainer.device)

    batches = trainer.batches(windows, lambda start: InfiniteSampler(len(pool), seed=seed, start_idx=start), windows.collate)
    timing = trainer.fit(batches, _objective, on_step=on_step, validate=validate, description="pretrain prior")
    stopper.restore(trainer.final_model)
    trained = trainer.final_model.model.eval()
    if trained is not model:
        model.load_state_dict(trained.state_dict())
    model.eval()
    return {"steps": trainer.step, "best_step": stopper.best_step, "best_val_loss": stopper.best_loss,
            "seconds": timing["seconds"], "dead_code_restarts": trainer.extra.get("restarts", 0),
            "curves": merged_history(trainer.history), "train_clips": len(pool), "val_clips": len(val)}


# --------------------------------------------------------------------------------------------
# Embedding whole clips, probes, plots, presets


def embed_clips(model: PriorModel, data: ClipSet, indices: list[int], mode: str, batch: int, device) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every head's (mu, logvar) of whole clips: mode ``both`` | ``audio`` | ``video``."""
    import torch

    order = sorted(indices, key=lambda i: data.clips[i].n_frames)  # similar lengths share a batch
    res = {h: ({}, {}) for h in model.heads}
    with torch.no_grad():
        for k in range(0, len(order), batch):
            part = order[k: k + batch]
            b = _to(data.batch(part), device)
            kw = {"audio": b["audio"], "audio_mask": b["audio_mask"]} if mode in ("both", "audio") else {}
            if mode in ("both", "video"):
                kw.update(visual=b["visual"], visual_mask=b["visual_mask"])
            out = model(**kw)
            for h, (mu, lv) in out.items():
                for j, i in enumerate(part):
                    res[h][0][i], res[h][1][i] = mu[j].cpu().numpy(), lv[j].cpu().numpy()
    return {h: (np.stack([m[i] for i in indices]), np.stack([v[i] for i in indices])) for h, (m, v) in res.items()}


def linear_probe(x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, y_ev: np.ndarray, l2: float) -> float:
    """Accuracy of a multinomial logistic regression (standardised inputs, L2, LBFGS) on the eval set."""
    import torch

    if len(x_ev) == 0 or len(np.unique(y_tr)) < 2:
        return float("nan")
    classes = np.unique(y_tr)
    y = torch.as_tensor(np.searchsorted(classes, y_tr))
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    xt = torch.as_tensor((x_tr - mean) / std, dtype=torch.float32)
    xe = torch.as_tensor((x_ev - mean) / std, dtype=torch.float32)
    W = torch.zeros(xt.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ W + b, y) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = classes[(xe @ W + b).argmax(1).numpy()]
    return float((pred == y_ev).mean())


def _chance(y: np.ndarray) -> float:
    """Majority-class rate of the evaluation labels."""
    return float(np.unique(y, return_counts=True)[1].max() / len(y)) if len(y) else float("nan")


def _round(v):
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return v


def evaluate(model: PriorModel, data: ClipSet, emb: dict, cfg: PretrainPriorConfig, seed: int) -> dict:
    """Probe metrics (DICE-Talk §3.1 disentanglement): ``emb[mode][head] = (mu, logvar)`` over all clips."""
    import torch

    clips = data.clips
    train_spk = {c.speaker for c in clips if c.split == "train"}
    emo = np.array([c.emotion for c in clips])
    spk = np.array([data.speaker_index[c.speaker] for c in clips])
    tr = [i for i, c in enumerate(clips) if c.split == "train" and c.emotion >= 0]
    held = [i for i, c in enumerate(clips) if c.split != "train" and c.emotion >= 0]
    unseen = [i for i in held if clips[i].speaker not in train_spk]
    ev = unseen or held
    metrics: dict = {"emotion_probe": {}, "identity": {}, "codebook": {}, "sigma": {}}
    ep = metrics["emotion_probe"]
    head = "emotion" if "emotion" in model.heads else model.heads[0]
    for mode in ("both", "audio", "video"):
        mu = emb[mode][head][0]
        ep[mode] = linear_probe(mu[tr], emo[tr], mu[ev], emo[ev], cfg.probe_l2)
        metrics["sigma"][mode] = float(np.exp(0.5 * emb[mode][head][1]).mean())  # mean posterior std
    # a baseline on raw inputs: mean + std of the expression offsets over the clip
    raw = np.stack([np.concatenate([x[v].mean(0), x[v].std(0)]) if v.any() else np.zeros(272)
                    for x, v in (data.expression(i) for i in range(len(clips)))])
    ep["landmark_baseline"] = linear_probe(raw[tr], emo[tr], raw[ev], emo[ev], cfg.probe_l2)
    ep["chance"] = _chance(emo[ev])
    ep["n_train"], ep["n_eval"] = len(tr), len(ev)
    ep["unseen_speakers"] = bool(unseen)
    ep["eval_speakers"] = sorted({clips[i].speaker for i in ev})

    # identity leakage: a speaker probe on held-out clips of speakers seen in training
    gen = np.random.default_rng(seed)
    p_tr, p_ev = [], []
    for s in sorted(train_spk):
        own = [i for i, c in enumerate(clips) if c.speaker == s and c.split == "train"]
        own = [own[j] for j in gen.permutation(len(own))]
        half = (len(own) + 1) // 2
        p_tr += own[:half]
        p_ev += own[half:] + [i for i, c in enumerate(clips) if c.speaker == s and c.split != "train"]
    idm = metrics["identity"]
    for h in model.heads:
        mu = emb["both"][h][0]
        idm[f"{h}_head"] = linear_probe(mu[p_tr], spk[p_tr], mu[p_ev], spk[p_ev], cfg.probe_l2)
    idm["chance"] = _chance(spk[p_ev])
    idm["n_speakers"] = len(train_spk)
    idm["n_eval"] = len(p_ev)

    # codebook usage over the emotion embeddings of every clip
    with torch.no_grad():
        z = torch.as_tensor(emb["both"][model.bank_head][0])
        out = model.bank(z.to(next(model.parameters()).device))
    used = torch.bincount(out.indices.reshape(-1).cpu(), minlength=model.bank_cfg.n_codes)
    cb = metrics["codebook"]
    cb["perplexity"] = float(out.perplexity)
    cb["n_codes"] = model.bank_cfg.n_codes
    cb["used_codes"] = int((used > 0).sum())
    cb["dead_codes"] = int((used == 0).sum())
    return _round(metrics)


def plot_embeddings(path: Path, mu: dict[str, np.ndarray], emotions: list[str], speakers: list[str], title: str) -> None:
    """PCA (torch.pca_lowrank) of embeddings, one row per head: coloured by emotion | by speaker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    heads = list(mu)
    fig, axes = plt.subplots(len(heads), 2, figsize=(11, 4.8 * len(heads)), squeeze=False)
    for r, h in enumerate(heads):
        x = torch.as_tensor(mu[h], dtype=torch.float32)
        q = min(2, x.shape[0], x.shape[1])
        _, _, V = torch.pca_lowrank(x, q=q, center=True)
        xy = ((x - x.mean(0)) @ V[:, :q]).numpy()
        xy = np.pad(xy, ((0, 0), (0, 2 - q)))
        for c, labels in enumerate((emotions, speakers)):
            ax = axes[r, c]
            names = sorted(set(labels), key=lambda n: (EMOTIONS.index(n) if n in EMOTIONS else 99, n))
            cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
            for k, n in enumerate(names):
                sel = np.array([lab == n for lab in labels])
                ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=cmap(k % cmap.N), label=n)
            ax.set_title(f"{h} head, by {'emotion' if c == 0 else 'speaker'}")
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
            ax.legend(fontsize=7, markerscale=0.8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def _presets(data: ClipSet, emb: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Emotion and (emotion, level) presets from the train clips; per-speaker style presets."""
    out = {}
    clips = data.clips
    tr = [i for i, c in enumerate(clips) if c.split == "train"]
    if "emotion" in emb:
        mu, lv = emb["emotion"]
        for e, name in enumerate(EMOTIONS):
            sel = [i for i in tr if clips[i].emotion == e]
            if sel:
                out[f"emotion/{name}"] = mixture_gaussian(mu[sel], lv[sel])
            for level in sorted({clips[i].level for i in sel}):
                lsel = [i for i in sel if clips[i].level == level]
                out[f"emotion/{name}/{level}"] = mixture_gaussian(mu[lsel], lv[lsel])
    if "style" in emb:
        mu, lv = emb["style"]
        for s in sorted({clips[i].speaker for i in tr}):
            sel = [i for i in tr if clips[i].speaker == s]
            out[f"style/{s}"] = mixture_gaussian(mu[sel], lv[sel])
    return out


def summary(metrics: dict):
    """Probe accuracies, codebook usage and the training run as a rich table."""
    from rich.table import Table

    t = Table(title="pretrain_prior")
    t.add_column("metric")
    t.add_column("value", justify="right")
    ep, idm, cb, tr = metrics["emotion_probe"], metrics["identity"], metrics["codebook"], metrics["train"]
    for mode in ("both", "audio", "video", "landmark_baseline", "chance"):
        t.add_row(f"emotion probe acc ({mode})", str(ep[mode]))
    for k, v in idm.items():
        t.add_row(f"speaker probe ({k})", str(v))
    t.add_row("codebook perplexity / used / codes", f"{cb['perplexity']} / {cb['used_codes']} / {cb['n_codes']}")
    t.add_row("steps (best)", f"{tr['steps']} ({tr['best_step']})")
    t.add_row("train seconds", f"{tr['seconds']:.1f}")
    return t


def load_data(params, cfg: PretrainPriorConfig) -> ClipSet:
    """The clips of ``paths.crops`` with their Whisper features, checked for what the heads need."""
    from talk.data.clips import ClipSet

    prior, paths = params.model.prior, params.paths
    data = ClipSet.load(paths.crops, paths.audio_features, prior.audio_layers, prior.audio_dim, cfg.template)
    manifest = Path(paths.crops) / "manifest.csv"
    labelled = data.indices("train", labelled=True)
    if "emotion" in prior.heads:
        spk = {data.clips[i].speaker for i in labelled}
        emos = {data.clips[i].emotion for i in labelled}
        if len(spk) < 2 or len(emos) < 2:
            raise TalkError(f"the emotion head needs labelled train clips of >= 2 speakers and >= 2 emotions; "
                            f"{manifest} has {len(spk)} speaker(s), {len(emos)} emotion(s)")
    if len(data.indices("train")) < 2:
        raise TalkError(f"{manifest}: fewer than 2 train clips")
    return data


def _curves_tsv(rows: list[dict]) -> str:
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k != "step", k))
    lines = ["\t".join(keys)] + ["\t".join("" if row.get(k) is None else f"{row[k]:.6g}" for k in keys) for row in rows]
    return "\n".join(lines) + "\n"


def _clip_arrays(data: ClipSet, emb: dict, bank_head: str) -> dict[str, np.ndarray]:
    arrays = {
        "clip_id": np.array([c.clip_id for c in data.clips]),
        "speaker": np.array([c.speaker for c in data.clips]),
        "emotion": np.array([EMOTIONS[c.emotion] if c.emotion >= 0 else "" for c in data.clips]),
        "level": np.array([c.level for c in data.clips], np.int64),
        "split": np.array([c.split for c in data.clips]),
    }
    for h, (mu, lv) in emb.items():
        prefix = "" if h == bank_head else f"{h}_"
        arrays[f"{prefix}mu"], arrays[f"{prefix}logvar"] = mu.astype(np.float32), lv.astype(np.float32)
    return arrays


def run_stage(params, cfg: PretrainPriorConfig, on_export) -> dict[str, Any]:
    """Train on ``paths.crops`` / ``paths.audio_features``; embed, probe and write ``paths.prior``
    (keeping its ``checkpoints/``); ``on_export(tmp)`` adds files to the output folder."""
    import torch

    from talk.models.prior import PriorModel

    prior, bank = params.model.prior, params.model.bank
    if bank.emb_dim != prior.emb_dim:
        raise TalkError(f"model.bank.emb_dim={bank.emb_dim} must equal model.prior.emb_dim={prior.emb_dim}")
    device, seed, out = runtime.device(params.base.device), params.base.seed, Path(params.paths.prior)
    data = load_data(params, cfg)
    runtime.seed_everything(seed)
    model = PriorModel(prior, bank).to(device)
    scale = torch.as_tensor(data.visual_scale(data.indices("train")))
    for e in model.embedders.values():
        e.visual_scale.copy_(scale)
    model.landmark_template.copy_(torch.as_tensor(data.population))
    runtime.log.info("pretrain_prior: %d clips (%d train), %d speakers, heads %s, device %s",
                     len(data), len(data.indices("train")), len(data.speakers), ",".join(prior.heads), device)
    result = train(model, data, cfg, seed, out / "checkpoints", params.base.device)
    model.to(device)

    every = list(range(len(data)))
    emb = {m: embed_clips(model, data, every, m, cfg.eval_batch, device) for m in ("both", "audio", "video")}
    metrics = evaluate(model, data, emb, cfg, seed)
    metrics["train"] = _round({k: v for k, v in result.items() if k != "curves"})
    meta_file = Path(params.paths.audio_features) / "meta.json"
    config = {
        "prior": to_plain(prior), "bank": to_plain(bank), "bank_head": model.bank_head, "emotions": list(EMOTIONS),
        "landmarks": {"normalisation": "eye-centred, eye axis horizontal, IOD units", "template": cfg.template,
                      "fps": VIDEO_FPS},
        "audio_features": json.loads(meta_file.read_text()) if meta_file.is_file() else None,
        "trained": {"seed": seed, "window_s": cfg.window, "speakers": data.speakers, **metrics["train"]},
    }
    with export_dir(out) as tmp:
        save_prior(tmp, model, config)
        save_presets(tmp / "presets.safetensors", _presets(data, emb["both"]), source="pretrain_prior (train split)")
        save_clip_embeddings(tmp / "clip_embeddings.npz", _clip_arrays(data, emb["both"], model.bank_head))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "curves.tsv").write_text(_curves_tsv(result["curves"]))
        shown = data.indices("test")
        if len({data.clips[i].speaker for i in shown}) < 2:  # one test speaker says nothing about identity
            shown = every
        plot_embeddings(tmp / "embeddings.png", {h: emb["both"][h][0][shown] for h in model.heads},
                        [EMOTIONS[data.clips[i].emotion] if data.clips[i].emotion >= 0 else "unlabelled" for i in shown],
                        [data.clips[i].speaker for i in shown],
                        f"{len(shown)} {'test' if shown != every else 'clips (all splits)'}, PCA of mu")
        on_export(tmp)
    return metrics
