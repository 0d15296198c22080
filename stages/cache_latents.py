"""Stage ``cache_latents``: VAE posteriors of every cropped frame, in an LMDB (talk/data/latent_cache.py).

Diffusion training reads latents, never video (LDM §3: the denoiser works in the autoencoder's
latent space). For each clip of the crop manifest (``paths.crops``) this stage decodes
``frames.mp4``, encodes every frame with the VAE of ``paths.vae`` and stores the posterior mean
and std (fp16) under the clip's id in ``paths.latents`` (with ``params.yaml`` beside them).

Resumable: clips are committed in batched transactions; a killed run loses at most the batch in
flight, and re-running skips every clip whose entry matches its frames.mp4 (sha256) and frame
count. Entries of clips no longer in the manifest are removed. A cache made with another VAE (or
format version), or whose LMDB files are damaged, is rebuilt from scratch. ``verify``
(``talk cache-latents --verify``) checks every entry and lists the problems (exit 2).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from talk.artifacts.vae import vae_identity
from talk.core.errors import TalkError
from talk.core.params import one_of, rng
from talk.core.runtime import console
from talk.core.runtime import device as pick_device
from talk.data import latent_cache as lc
from talk.data.crops import read_manifest

SECTIONS = ("base", "paths", "model", "cache_latents")  # every section read


@dataclasses.dataclass(frozen=True)
class Config:
    batch_size: int = dataclasses.field(default=32, metadata=rng(1))  # frames per encoder forward pass
    autocast: str = dataclasses.field(default="bfloat16", metadata=one_of("float32", "bfloat16", "float16"))  # encoder compute dtype (the cache is fp16 either way)
    commit_mb: float = dataclasses.field(default=64.0, metadata=rng(0.0))  # MB of encoded clips per write transaction (what a kill can lose); 0 = one clip each
    map_size_mb: int = dataclasses.field(default=0, metadata=rng(0))  # initial LMDB map size in MB; 0 = estimated from the manifest (it grows when full)


def verify(params) -> list[str]:
    """Every problem of the cache against the manifest and the configured VAE; raises if any."""
    out = params.paths.latents
    df = read_manifest(params.paths.crops)
    expected = {c: int(n) for c, n in zip(df["clip_id"], df["n_frames"])}
    problems = lc.verify(out, expected, vae_identity(params.paths.vae))
    if problems:
        console.print(lc.problems_table(problems))
        raise TalkError(f"latent cache {out}: {len(problems)} problem(s), listed above; re-run `talk cache-latents`")
    console.print(f"[green]latent cache {out}: {len(expected)} clips, all entries sound[/]", highlight=False)
    return problems


def run(params, verify_only: bool = False) -> dict[str, Any]:
    """Encode every clip not cached yet (or changed) and commit in batches; prune stale clips."""
    if verify_only:
        verify(params)
        return {"problems": 0}
    cfg: Config = params.cache_latents
    out = Path(params.paths.latents)
    s = lc.update(out, params.paths.crops, params.paths.vae, params.model.image_size, pick_device(params.base.device),
                  cfg.batch_size, cfg.autocast, cfg.commit_mb, cfg.map_size_mb)
    params.write_resolved(out / "params.yaml", SECTIONS)
    console.print(lc.summary_table(out, s))
    return s
