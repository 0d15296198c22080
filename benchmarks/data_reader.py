"""Benchmark: the diffusion data reader (talk/data/windows.py) against raw LMDB reads and the trainer.

Builds a synthetic latent cache + Whisper-tiny-shaped features at the default profile's shapes
(latent (C, h, w) from params.yaml's model.vae and model.image_size, M / F / k from model; 75-frame
clips), then measures samples/s of
  1. raw LMDB: the same frames' bytes copied out of the same values (the floor of any reader);
  2. the reader: ``LatentDataset[(epoch, index)]`` (decode, sample eps, scale, audio windows), in
     process, and through a DataLoader (batch 8, 0 and 2 workers);
  3. the trainer's consumption. The diffusion trainer is another module; its stand-in here is
     forward + backward + AdamW of a diffusers UNet2DConditionModel sized like FINDINGS' tiny UNet
     (blocks (64, 128), attention on the 2nd level, 128-d context) on a batch from the reader:
     input = noisy target + ref + M motion latents along channels, context = the k audio frames
     projected to 128-d tokens.
Goal: reader >= 10x the trainer's consumption. Peak RSS is printed beside the times.

    .venv/bin/python benchmarks/data_reader.py [--clips 120] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(tmp: Path, clips: int, n_frames: int, shape: tuple[int, int, int], layers: int, dim: int) -> None:
    import numpy as np
    from latents_fixture import make_manifest_only

    from talk.data import latent_cache as lc

    ids = {f"clip{i:04d}": n_frames for i in range(clips)}
    make_manifest_only(tmp / "crops", ids, speakers=8)
    g = np.random.default_rng(0)
    w = lc.CacheWriter(tmp / "db", lc.make_meta("bench", {}, 0.5, shape, shape[1] * 4), map_size=1 << 26)
    batch = []
    (tmp / "feats").mkdir()
    for cid in ids:
        mean = g.standard_normal((n_frames, *shape), dtype=np.float32)
        batch.append((cid, lc.pack(mean, np.abs(mean) * 0.1, b"\0" * 32)))
        if len(batch) == 32:
            w.put(batch)
            batch = []
        np.save(tmp / "feats" / f"{cid}.npy", g.standard_normal((2 * n_frames, layers, dim), dtype=np.float32).astype(np.float16))
    w.put(batch)
    w.close()


def timed(fn, n: int) -> float:
    """samples/s of calling fn(i) for i in range(n)."""
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=120, help="clips of 75 frames in the synthetic cache")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the trainer stand-in")
    ap.add_argument("--samples", type=int, default=2000, help="items read per reader measurement")
    ap.add_argument("--steps", type=int, default=6, help="timed trainer steps (after 2 warm-up steps)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from talk.core import params as P
    from talk.data.windows import InfiniteSampler, LatentDataset

    params = P.load(ROOT / "params.yaml")
    m = params.model
    down = 2 ** (len(m.vae.block_out_channels) - 1)
    shape = (m.vae.latent_channels, m.image_size // down, m.image_size // down)
    layers, dim, batch = 5, 384, 8
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        build(tmp, args.clips, 75, shape, layers, dim)
        t_build = time.perf_counter() - t0
        ds = LatentDataset(tmp / "db", tmp / "feats", tmp / "crops", "train", m.target_frames, m.motion_frames,
                           m.audio_window, seed=0)
        order = list(itertools.islice(InfiniteSampler(ds, seed=0), args.samples))
        for item in order[:200]:  # warm the page cache and the memory maps
            ds[item]

        # 1. raw LMDB: copy the same (ref, motion, target) frames' bytes out of each value
        cache = ds.cache
        frame_bytes = 2 * 2 * int(np.prod(shape))
        plan = []
        for e, i in order:
            c, t = ds.locate(i)
            frames = [0] + [max(u, 0) for u in range(t - m.motion_frames, t)] + list(range(t, t + m.target_frames))
            plan.append((ds.clip_ids[c].encode(), frames))
        from talk.data.latent_cache import HEADER

        def raw(k: int) -> None:
            key, frames = plan[k]
            with cache.env.begin(buffers=True) as txn:
                buf = txn.get(key)
                out = bytearray(len(frames) * frame_bytes)
                for j, f in enumerate(frames):
                    o = HEADER.size + f * frame_bytes
                    out[j * frame_bytes : (j + 1) * frame_bytes] = buf[o : o + frame_bytes]

        raw_sps = timed(raw, len(plan))

        # 2. the reader, in process and through DataLoaders
        reader_sps = timed(lambda k: ds[order[k]], len(order))
        loader_sps = {}
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=InfiniteSampler(ds, seed=0),
                                                 num_workers=workers, persistent_workers=False)
            it = iter(loader)
            for _ in range(10):
                next(it)
            n_batches = max(10, args.samples // batch // 2)
            t = time.perf_counter()
            for _ in range(n_batches):
                b = next(it)
            loader_sps[workers] = n_batches * batch / (time.perf_counter() - t)
            del it, loader

        rss_reader = rss_mb()

        # 3. trainer stand-in on reader batches
        from diffusers import UNet2DConditionModel

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        c = shape[0]
        unet = UNet2DConditionModel(
            sample_size=shape[1], in_channels=c * (2 + m.motion_frames), out_channels=c,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=128, attention_head_dim=32,
            norm_num_groups=16,
        )
        proj = torch.nn.Linear(layers * dim, 128)
        opt = torch.optim.AdamW([*unet.parameters(), *proj.parameters()], lr=1e-4)
        n_params = sum(p.numel() for p in unet.parameters())
        loader = iter(torch.utils.data.DataLoader(ds, batch_size=batch, sampler=InfiniteSampler(ds, seed=1)))

        def step(_: int) -> None:
            b = next(loader)
            x0 = b["target"][:, 0]  # (B, C, h, w)
            noise = torch.randn_like(x0)
            x = torch.cat([x0 + noise, b["ref"], b["motion"].flatten(1, 2)], 1)  # (B, C(2+M), h, w)
            ctx = proj(b["audio"][:, 0].flatten(2))  # (B, k, 128)
            t = torch.randint(0, 1000, (x.shape[0],))
            loss = torch.nn.functional.mse_loss(unet(x, t, ctx).sample, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for i in range(2):
            step(i)
        train_sps = timed(step, args.steps) * batch

    table = Table(title=f"data reader, latent {shape}, M={m.motion_frames} F={m.target_frames} k={m.audio_window}, "
                        f"{args.clips} clips x 75 frames (built in {t_build:.1f} s)")
    for col in ("what", "samples/s", "vs trainer"):
        table.add_column(col, justify="right" if col != "what" else "left")
    rows = [
        ("raw LMDB read of the same frames (1 process)", raw_sps),
        ("reader LatentDataset[i] (1 process)", reader_sps),
        ("reader DataLoader batch 8, 0 workers", loader_sps[0]),
        ("reader DataLoader batch 8, 2 workers", loader_sps[2]),
        (f"trainer stand-in: UNet2DConditionModel {n_params / 1e6:.1f}M fwd+bwd+AdamW, batch 8, {args.threads} threads",
         train_sps),
    ]
    for what, sps in rows:
        table.add_row(what, f"{sps:,.0f}", f"{sps / train_sps:,.1f}x")
    console = Console()
    console.print(table)
    console.print(f"reader / raw LMDB: {reader_sps / raw_sps:.2f}x; reader / trainer: {reader_sps / train_sps:.0f}x "
                  f"(goal >= 10x); peak RSS {rss_reader:.0f} MB after the reader measurements, "
                  f"{rss_mb():.0f} MB with the trainer stand-in")


if __name__ == "__main__":
    main()
