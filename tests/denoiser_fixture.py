"""Tiny stand-ins for the denoiser tests: a window dataset of random latents, its sampler, embeddings.

The dataset yields the dicts of talk/data/windows.py (``ref`` (C, h, w), ``target`` (F, C, h, w),
``motion`` (M, C, h, w), ``audio`` (F, k, L, D), ``emotion``, ``level``, ``speaker``, ``clip_id``,
``frame``), deterministic per index, with a target that depends on the reference, the audio and
the emotion so that every condition carries information.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from talk.models.denoiser import DenoiserSpec
from talk.models.denoiser_config import ConditioningConfig, DenoiserConfig, DiffusionConfig
from talk.models.prior_config import EmotionBankConfig

C, S, M, K, L, D = 4, 8, 2, 4, 2, 8  # latent channels / side, motion frames, Whisper window / layers / width
EMB = 8  # emotion (and style) embedding width
BANK = EmotionBankConfig(emb_dim=EMB, n_codes=4, code_dim=8, attn_heads=2, n_queries=2, n_tokens=2, token_dim=8)


def tiny_spec(backbone: str = "frame", frames: int = 1, style: bool = True, **diffusion) -> DenoiserSpec:
    den = DenoiserConfig(
        backbone=backbone,
        block_out_channels=(32, 32) if backbone == "clip" else (16, 32),
        attention_levels=(False, True),
        attention_head_dim=8,
        cross_attention_dim=16,
        norm_num_groups=8,
        addition_time_embed_dim=4,
    )
    return DenoiserSpec(
        denoiser=den,
        conditioning=ConditioningConfig(audio_tokens=2, audio_hidden=8, style_tokens=2 if style else 0),
        diffusion=DiffusionConfig(num_train_timesteps=100, **diffusion),
        latent_channels=C,
        latent_size=S,
        motion_frames=M,
        target_frames=frames,
        audio_window=K,
        audio_layers=L,
        audio_dim=D,
        emotion_dim=EMB,
        emotion_tokens=BANK.n_tokens,
        emotion_token_dim=BANK.token_dim,
        style_dim=EMB if style else 0,
    )


def make_bank():
    from talk.models.emotion_bank import EmotionBank

    torch.manual_seed(0)
    return EmotionBank(BANK)


def batch(b: int = 2, frames: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        ref=torch.randn(b, C, S, S, generator=g),
        motion=torch.randn(b, M, C, S, S, generator=g),
        audio=torch.randn(b, frames, K, L, D, generator=g),
        emotion=torch.randn(b, EMB, generator=g),
        style=torch.randn(b, EMB, generator=g),
    )


class ToyWindows(torch.utils.data.Dataset):
    """n windows of 4 clips (2 emotions x 2 speakers), deterministic per index."""

    def __init__(self, n: int = 12, frames: int = 1, seed: int = 0):
        self.n, self.frames, self.seed = n, frames, seed
        g = torch.Generator().manual_seed(seed)
        self.faces = torch.randn(2, C, S, S, generator=g)  # one reference per speaker
        self.smile = torch.randn(C, S, S, generator=g)  # what emotion 5 (happy) adds
        self.mouth = torch.randn(C, S, S, generator=g)  # what loud audio adds

    def __len__(self) -> int:
        return self.n

    def clip(self, i: int) -> str:
        return f"S{i % 2}_e{(i // 2) % 2}"

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        spk, emo = i % 2, (i // 2) % 2
        loud = torch.rand((self.frames,), generator=g)  # (F,)
        audio = torch.randn(self.frames, K, L, D, generator=g) * 0.1 + loud.view(-1, 1, 1, 1)
        ref = self.faces[spk]
        target = ref + emo * self.smile + loud.view(-1, 1, 1, 1) * self.mouth  # (F, C, S, S)
        return {
            "ref": ref.clone(),
            "target": target + 0.05 * torch.randn(target.shape, generator=g),
            "motion": ref.expand(M, -1, -1, -1).clone(),
            "audio": audio,
            "emotion": 5 * emo,
            "level": 2 * emo,
            "speaker": spk,
            "clip_id": self.clip(i),
            "frame": i,
        }


class ToySampler:
    """An infinite shuffled index stream resumable at ``start_idx`` (edm2's InfiniteSampler idea)."""

    def __init__(self, dataset, seed: int = 0, start_idx: int = 0):
        self.n, self.seed, self.start = len(dataset), seed, start_idx

    def __iter__(self):
        i = self.start
        while True:
            epoch, pos = divmod(i, self.n)
            yield int(np.random.default_rng([self.seed, epoch]).permutation(self.n)[pos])
            i += 1


def write_embeddings(path: Path, dataset: ToyWindows) -> Path:
    ids = sorted({dataset.clip(i) for i in range(len(dataset))})
    rng = np.random.default_rng(0)
    np.savez(
        path,
        clip_id=np.array(ids),
        mu=rng.normal(size=(len(ids), EMB)).astype(np.float32) + np.array([[3.0 * ("e1" in c)] for c in ids], np.float32),
        logvar=np.full((len(ids), EMB), -4.0, np.float32),
        style_mu=rng.normal(size=(len(ids), EMB)).astype(np.float32),
        style_logvar=np.full((len(ids), EMB), -4.0, np.float32),
    )
    return path


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


# --------------------------------------------------------------------------------------------
# A whole upstream pipeline in miniature (docs/pipeline.md formats) for the stage / CLI tests


def make_pipeline_inputs(root: Path) -> Path:
    """crops manifest + audio features + VAE + latent cache + prior folder under ``root``; a params file.

    Latents come from a real (random) 2-level VAE on 16 px frames (4x8x8); the cache carries that
    VAE's identity; the prior folder is what ``load_prior`` reads (untrained weights).
    """
    import json as _json

    import yaml
    from latents_fixture import MANIFEST_COLUMNS
    from talk.artifacts.files import save_safetensors

    from talk.artifacts.prior import FORMAT, VERSION
    from talk.artifacts.vae import save_vae, vae_identity
    from talk.core.params import to_plain
    from talk.data import latent_cache as lc
    from talk.models.prior import PriorModel
    from talk.models.prior_config import PriorConfig
    from talk.models.vae import build_vae
    from talk.models.vae_config import VaeConfig

    root = Path(root)
    crops, feats, vae_dir, cache, prior_dir = (root / n for n in ("crops", "audio_features", "vae", "latents.lmdb", "prior"))
    for d in (crops, feats, prior_dir):
        d.mkdir(parents=True, exist_ok=True)
    vae_cfg = VaeConfig(block_out_channels=(8, 8), latent_channels=C, norm_num_groups=4)
    torch.manual_seed(0)
    save_vae(build_vae(vae_cfg, 16), vae_dir)
    identity = vae_identity(vae_dir)

    clips = [(f"S{s}_{e}_{i}", f"S{s}", e, lvl, split)
             for s, split in ((0, "train"), (1, "train"), (2, "val"))
             for i, (e, lvl) in enumerate((("neutral", 1), ("happy", 2), ("sad", 3), ("", 0)))]
    n = 8
    rng = np.random.default_rng(0)
    meta = lc.make_meta(identity, {"fixture": True}, 0.5, (C, S, S), S * 4)
    writer = lc.CacheWriter(cache, meta, map_size=1 << 22)
    rows, items = [], []
    for clip_id, spk, emo, lvl, split in clips:
        mean = rng.normal(0, 1, (n, C, S, S)).astype(np.float32)
        items.append((clip_id, lc.pack(mean, np.full((n, C, S, S), 0.1, np.float32), b"\0" * 32)))
        np.save(feats / f"{clip_id}.npy", rng.normal(0, 1, (2 * n, L, D)).astype(np.float16))
        rows.append({"clip_id": clip_id, "speaker": spk, "emotion": emo, "level": lvl, "video_path": "", "audio_path": "",
                     "duration": n / 25, "fps": 25.0, "width": 16, "height": 16, "has_audio": True, "split": split,
                     "subset": "mead" if emo else "wild", "gt_path": "", "n_frames": n, "crop_dir": str(crops / clip_id)})
    writer.put(items)
    writer.close()
    import pandas as pd

    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(crops / "manifest.csv", index=False)

    prior_cfg = PriorConfig(heads=("emotion", "style"), emb_dim=EMB, width=16, layers=1, attn_heads=2, audio_layers=L, audio_dim=D)
    model = PriorModel(prior_cfg, BANK)
    (prior_dir / "config.json").write_text(_json.dumps({"format": FORMAT, "version": VERSION, "prior": to_plain(prior_cfg),
                                                       "bank": to_plain(BANK)}))
    save_safetensors(prior_dir / "model.safetensors", model.state_dict())  # the writer pretrain_prior uses (0644)
    ids = [c[0] for c in clips]
    np.savez(prior_dir / "clip_embeddings.npz", clip_id=np.array(ids),
             mu=rng.normal(size=(len(ids), EMB)).astype(np.float32), logvar=np.full((len(ids), EMB), -3, np.float32),
             style_mu=rng.normal(size=(len(ids), EMB)).astype(np.float32),
             style_logvar=np.full((len(ids), EMB), -3, np.float32))

    spec = tiny_spec()
    den = dataclasses.asdict(spec.denoiser)
    loop = {"batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2}
    params = {
        "base": {"seed": 0, "device": "cpu", "threads": 1},
        "paths": {"crops": str(crops), "latents": str(cache), "audio_features": str(feats), "prior": str(prior_dir),
                  "vae": str(vae_dir), "diffusion": str(root / "diffusion"), "diffusion_train": str(root / "diffusion_train"),
                  "finetune_disc": str(root / "finetune_disc"), "finetune_disc_train": str(root / "finetune_disc_train")},
        "model": {"image_size": 16, "motion_frames": M, "target_frames": 1, "audio_window": K,
                  "prior": to_plain(prior_cfg), "bank": to_plain(BANK), "vae": to_plain(vae_cfg),
                  "denoiser": {k: (list(v) if isinstance(v, tuple) else v) for k, v in den.items()},
                  "conditioning": dataclasses.asdict(spec.conditioning),
                  "diffusion": {"num_train_timesteps": 100},
                  "discriminator": {"hidden": 16, "time_embed_dim": 8}},
        "train_diffusion": {"loop": {**loop, "steps": 3}, "val_batches": 1, "preview": {"samples": 2},
                            "sampling": {"steps": 2}},
        "finetune_disc": {"loop": {**loop, "steps": 2}, "val_batches": 1, "preview": {"samples": 2},
                          "judge_steps": 2, "judge_t_max": 50},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
