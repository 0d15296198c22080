"""VAE (models/vae.py, stages/fit_vae.py), latent cache (talk/data/latent_cache.py,
stages/cache_latents.py) and the training data reader (talk/data/windows.py) on tiny fixtures."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from latents_fixture import make_crops, make_manifest_only, make_synthetic_cache

from talk.core import params as P
from talk.core.errors import TalkError
from talk.data import latent_cache as lc

ROOT = Path(__file__).resolve().parents[1]
CLIPS = [  # clip_id, speaker, emotion, level, split
    ("A_neutral_1", "A", "neutral", 1, "train"),
    ("A_happy_1", "A", "happy", 2, "train"),
    ("B_sad_1", "B", "sad", 3, "train"),
    ("B_wild_1", "B", "", 0, "train"),
    ("A_angry_1", "A", "angry", 1, "val"),
]
N_FRAMES = 12
SIZE = 32


def overrides(root: Path, **extra: object) -> list[str]:
    sets = {
        "base.threads": 1,
        "model.image_size": SIZE,
        "model.vae.kind": "patch",
        "model.vae.patch_size": 2,  # the shipped PatchAutoencoder, at 32 px -> a 16x16 latent
        "model.vae.width": 16,
        "model.vae.latent_channels": 4,
        "model.vae.norm_num_groups": 8,
        "fit_vae.pca_patches": 64,
        "paths.crops": root / "crops",
        "paths.vae": root / "vae",
        "paths.latents": root / "latents.lmdb",
        "fit_vae.frames_per_clip": 6,
        "fit_vae.val_frames": 8,
        "fit_vae.scale_frames": 24,
        "fit_vae.loop.steps": 60,
        "fit_vae.loop.lr": 0.002,
        "fit_vae.loop.batch_size": 4,
        "fit_vae.patch": 16,
        "fit_vae.loop.warmup_steps": 5,
        "fit_vae.loop.log_every": 10,
        "fit_vae.loop.checkpoint_every": 30,
        "cache_latents.autocast": "float32",
        "cache_latents.batch_size": 5,
        **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def params_file(root: Path) -> Path:
    """An empty params file (every section at its code defaults, then ``overrides``)."""
    path = root / "params.yaml"
    if not path.is_file():
        path.write_text("{}\n")
    return path


def load_params(root: Path, **extra: object) -> P.Params:
    return P.load(params_file(root), overrides(root, **extra))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Crops + features, a VAE trained by the real fit_vae stage, and a cache by cache_latents."""
    from talk.stages import cache_latents, fit_vae

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latents")
    make_crops(root, CLIPS, n_frames=N_FRAMES, size=SIZE)
    params = load_params(root)
    metrics = fit_vae.run(params)
    summary = cache_latents.run(params)
    return root, params, metrics, summary


# --------------------------------------------------------------------------------------------
# VAE


def test_vae_factory_shapes_and_gradients():
    from talk.models.vae import LossWeights, VaeConfig, build_vae, vae_loss

    torch.manual_seed(0)
    vae = build_vae(VaeConfig(kind="kl", block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=4), 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    post = vae.encode(x).latent_dist
    assert post.mean.shape == (2, 4, 8, 8)
    assert vae.decode(post.mean).sample.shape == (2, 3, 32, 32)
    loss, parts = vae_loss(vae, x, LossWeights())
    loss.backward()
    assert set(parts) == {"l1", "l2", "gradient", "spectrum", "kl"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters() if p.requires_grad)


def test_psnr_ssim_reference_values():
    """fit_vae's reconstruction figures come from talk/evaluation/metrics/image.py (uint8 frames)."""
    from talk.evaluation.metrics.image import psnr, ssim

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(ssim(x, x), np.ones(3), atol=1e-5)
    assert (psnr(x, x) > 90).all()
    y = np.clip(x.astype(int) + 25, 0, 255).astype(np.uint8)
    mse = ((x.astype(float) - y.astype(float)) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(psnr(x, y), 10 * np.log10(255.0**2 / mse), atol=1e-4)
    assert (ssim(x, g.integers(0, 256, x.shape, dtype=np.uint8)) < 0.2).all()


def test_fit_vae_writes_a_loadable_vae_and_metrics(fitted):
    from talk.artifacts.vae import load_vae, vae_identity

    root, params, metrics, _ = fitted
    out = root / "vae"
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "metrics.json", "loss.tsv", "params.yaml"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss_last"] < 0.98 * m["loss_first"]  # training lowered the loss (from the PCA start, already low)
    assert m["val_psnr"] > 12 and 0 < m["val_ssim"] <= 1  # a fresh VAE gives ~8 dB
    assert m["latent_shape"] == [4, 16, 16]
    vae, scaling, identity = load_vae(out)
    assert scaling == pytest.approx(m["scaling_factor"]) and scaling > 0
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == pytest.approx(scaling)
    assert identity == vae_identity(out) == metrics["identity"]
    lines = (out / "loss.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["step", "lr", "loss"] and len(lines) == 1 + 60 // 10


def test_scaling_factor_gives_unit_variance(fitted):
    from talk.artifacts.vae import encode_frames, load_vae
    from talk.data.crops import read_frames

    root, *_ = fitted
    vae, scaling, _ = load_vae(root / "vae")
    frames = np.concatenate([read_frames(root / "crops" / c[0] / "frames.mp4", range(N_FRAMES), SIZE) for c in CLIPS[:4]])
    mean, std = encode_frames(vae, frames)
    z = (mean + std * torch.randn_like(std)) * scaling
    assert float(z.std()) == pytest.approx(1.0, rel=0.15)


def test_decode_latents_chunks(fitted):
    from talk.artifacts.vae import decode_latents, encode_frames, load_vae
    from talk.data.crops import read_frames

    root, *_ = fitted
    vae, scaling, _ = load_vae(root / "vae")
    frames = read_frames(root / "crops" / CLIPS[0][0] / "frames.mp4", range(5), SIZE)
    mean, _ = encode_frames(vae, frames)
    a = decode_latents(vae, mean * scaling, chunk=2)
    b = decode_latents(vae, mean * scaling, chunk=16)
    assert a.shape == (5, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_fit_vae_with_a_pretrained_folder_measures_without_training(fitted, tmp_path):
    from talk.artifacts import vae as vae_art
    from talk.core import weights
    from talk.models.vae import VaeConfig, build_vae
    from talk.stages import fit_vae

    root, *_ = fitted
    torch.manual_seed(1)
    src = tmp_path / "sd" / "vae"  # the layout of a pipeline folder: <root>/vae/
    build_vae(VaeConfig(kind="kl", block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=4), SIZE).save_pretrained(str(src))
    params = load_params(root, **{"model.vae.source": tmp_path / "sd", "paths.vae": tmp_path / "vae"})
    comps = [c for c in weights.components(params) if "VAE" in c.name]
    assert len(comps) == 1 and comps[0].path == src
    m = fit_vae.run(params)
    assert m["steps"] == 0 and m["loss_first"] is None and m["latent_shape"] == [4, 8, 8]
    assert m["identity"] == vae_art.vae_identity(tmp_path / "vae") != vae_art.vae_identity(root / "vae")
    vae, scaling, _ = vae_art.load_vae(tmp_path / "vae")
    assert scaling == pytest.approx(m["scaling_factor"]) and scaling != 1.0
    with pytest.raises(TalkError, match="no diffusers AutoencoderKL folder"):
        vae_art.vae_source_dir(tmp_path / "sd" / "nothing")


def test_fit_vae_cli_dry_run_and_bad_crops(runner, tmp_path):
    from talk.cli.main import app

    r = runner.invoke(app, ["fit-vae", "--dry-run", "--set", "fit_vae.loop.steps=3"])
    assert r.exit_code == 0 and "steps: 3" in r.output and "vae:" in r.output
    r = runner.invoke(app, ["fit-vae", "--set", f"paths.crops={tmp_path / 'nope'}"])
    assert r.exit_code == 2 and "not found" in r.output


# --------------------------------------------------------------------------------------------
# Latent cache


def test_cache_round_trip_equals_direct_encoding(fitted):
    from talk.artifacts.vae import encode_frames, load_vae
    from talk.data.crops import read_frames

    root, _, _, summary = fitted
    assert summary["encoded"] == len(CLIPS) and summary["frames"] == len(CLIPS) * N_FRAMES
    vae, scaling, identity = load_vae(root / "vae")
    cache = lc.LatentCache(root / "latents.lmdb", identity=identity)
    assert cache.shape == (4, 16, 16) and cache.scaling_factor == pytest.approx(scaling)
    assert sorted(cache.keys()) == sorted(c[0] for c in CLIPS)
    for clip in (CLIPS[0][0], CLIPS[4][0]):
        frames = read_frames(root / "crops" / clip / "frames.mp4", range(N_FRAMES), SIZE)
        mean, std = encode_frames(vae, frames)
        got = cache.read(clip).astype(np.float32)  # (T, 2, C, h, w)
        np.testing.assert_allclose(got[:, 0], mean.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(got[:, 1], std.numpy(), rtol=2e-3, atol=1e-4)
        np.testing.assert_array_equal(cache.read(clip, [3, 0, 3]), cache.read(clip)[[3, 0, 3]])


def test_rerun_skips_done_clips_and_prunes_stale(fitted, tmp_path):
    import shutil

    from talk.stages import cache_latents

    root, params, _, _ = fitted
    db = tmp_path / "copy.lmdb"
    shutil.copytree(root / "latents.lmdb", db)
    w = lc.CacheWriter(db, lc.LatentCache(db).meta)
    w.put([("gone_clip", lc.pack(np.zeros((2, 4, 16, 16)), np.ones((2, 4, 16, 16)), b"\0" * 32))])
    w.delete([CLIPS[1][0]])
    w.close()
    s = cache_latents.run(load_params(root, **{"paths.latents": db}))
    assert (s["encoded"], s["skipped"], s["removed"]) == (1, len(CLIPS) - 1, 1)
    assert sorted(lc.LatentCache(db).keys()) == sorted(c[0] for c in CLIPS)


KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from talk.core import params as P
    from talk.data import latent_cache as lc
    from talk.stages import cache_latents
    from talk.core import runtime
    calls = []
    real_put = lc.CacheWriter.put
    def put(self, items):
        calls.append(1)
        if len(calls) == 3:  # die in the middle of the third write transaction
            def fn(txn):
                txn.put(items[0][0].encode(), items[0][1][:100])
                print("IN_TRANSACTION", flush=True)
                time.sleep(120)
            self._txn(fn)
        real_put(self, items)
    lc.CacheWriter.put = put
    params = P.load(sys.argv[1], json.loads(sys.argv[2]))
    runtime.setup(params.base)
    cache_latents.run(params)
""")


def test_killed_writer_resumes_to_a_sound_cache(fitted, tmp_path):
    from talk.stages import cache_latents

    root, *_ = fitted
    db = tmp_path / "killed.lmdb"
    sets = overrides(root, **{"paths.latents": db, "cache_latents.commit_mb": 0})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(params_file(root)), json.dumps(sets)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "IN_TRANSACTION", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    part = lc.LatentCache(db)
    assert len(part.keys()) == 2  # two committed transactions survived, the third never happened
    assert lc.verify(db, {c[0]: N_FRAMES for c in CLIPS[:2]}) == []
    s = cache_latents.run(load_params(root, **{"paths.latents": db}))
    assert (s["encoded"], s["skipped"]) == (len(CLIPS) - 2, 2)
    clean = lc.LatentCache(root / "latents.lmdb")
    resumed = lc.LatentCache(db)
    assert lc.verify(db, {c[0]: N_FRAMES for c in CLIPS}) == []
    for clip in clean.keys():
        assert resumed.raw(clip) == clean.raw(clip), clip


def test_verify_lists_corrupt_and_missing_entries(fitted, tmp_path, runner):
    import shutil

    from talk.cli.main import app
    from talk.stages import cache_latents

    root, *_ = fitted
    db = tmp_path / "bad.lmdb"
    shutil.copytree(root / "latents.lmdb", db)
    meta = lc.LatentCache(db).meta
    w = lc.CacheWriter(db, meta)
    good = lc.LatentCache(db).raw(CLIPS[0][0])
    flipped = bytearray(good)
    flipped[-8] ^= 0x01  # lowest mantissa bit of one payload value: only the checksum sees it
    nan_mean = np.full((N_FRAMES, 4, 16, 16), np.nan, np.float32)
    w.put([(CLIPS[0][0], bytes(flipped)),
           (CLIPS[1][0], lc.pack(nan_mean, np.ones_like(nan_mean), b"\0" * 32)),
           (CLIPS[2][0], good[: len(good) // 2])])
    w.delete([CLIPS[3][0]])
    w.close()
    problems = lc.verify(db, {c[0]: N_FRAMES for c in CLIPS}, meta["vae_identity"])
    text = "\n".join(problems)
    assert f"{CLIPS[0][0]}: checksum mismatch" in text
    assert f"{CLIPS[1][0]}: NaN or infinite values" in text
    assert f"{CLIPS[2][0]}: value holds" in text
    assert f"{CLIPS[3][0]}: missing" in text
    assert CLIPS[4][0] not in text and len(problems) == 4
    sets = [x for o in overrides(root, **{"paths.latents": db}) for x in ("--set", o)]
    r = runner.invoke(app, ["cache-latents", "--verify", "--params", str(params_file(root)), *sets])
    assert r.exit_code == 2, r.output
    assert "4 problem(s)" in r.output and CLIPS[3][0] in r.output
    sets = [x for o in overrides(root) for x in ("--set", o)]
    r = runner.invoke(app, ["cache-latents", "--verify", "--params", str(params_file(root)), *sets])
    assert r.exit_code == 0, r.output
    s = cache_latents.run(load_params(root, **{"paths.latents": db}))  # a re-run repairs it
    assert (s["encoded"], s["skipped"]) == (4, 1)
    assert lc.verify(db, {c[0]: N_FRAMES for c in CLIPS}, meta["vae_identity"]) == []


def test_cache_of_another_vae_or_format_is_a_clear_error(fitted, tmp_path):

    from talk.stages import cache_latents

    root, *_ = fitted
    with pytest.raises(TalkError, match="made with VAE"):
        lc.LatentCache(root / "latents.lmdb", identity="0" * 64)
    with pytest.raises(TalkError, match="no latent cache"):
        lc.LatentCache(tmp_path / "none.lmdb")
    db = tmp_path / "v0.lmdb"
    meta = {**lc.LatentCache(root / "latents.lmdb").meta, "version": 0}
    with lc.env(db, write=True).begin(write=True) as txn:
        txn.put(lc.META_KEY, json.dumps(meta).encode())
    lc.close_env(db)
    with pytest.raises(TalkError, match="version 0"):
        lc.LatentCache(db)
    # the stage rebuilds a cache made with another VAE instead of mixing latents
    other = tmp_path / "other.lmdb"
    make_synthetic_cache(other, {CLIPS[0][0]: N_FRAMES}, shape=(4, 16, 16), identity="another-vae")
    s = cache_latents.run(load_params(root, **{"paths.latents": other}))
    assert s["encoded"] == len(CLIPS)
    assert lc.LatentCache(other).identity == lc.LatentCache(root / "latents.lmdb").identity


def test_writer_grows_a_full_map(tmp_path):
    meta = lc.make_meta("x", {}, 1.0, (4, 16, 16), 64)
    w = lc.CacheWriter(tmp_path / "db", meta, map_size=1 << 16)  # 64 KB: full after a few clips
    start = w.env.info()["map_size"]
    vals = [(f"c{i}", lc.pack(np.ones((20, 4, 16, 16)), np.ones((20, 4, 16, 16)), b"\0" * 32)) for i in range(8)]
    w.put(vals[:4])
    w.put(vals[4:])
    assert w.env.info()["map_size"] > start
    w.close()
    assert lc.verify(tmp_path / "db", {f"c{i}": 20 for i in range(8)}) == []


# --------------------------------------------------------------------------------------------
# Data reader


@pytest.fixture
def synthetic(tmp_path):
    """A cache whose latent mean is 100 * clip + frame, std 0, plus features and a manifest."""
    clips = {"c0": 10, "c1": 7, "c2": 12}
    make_manifest_only(tmp_path / "crops", clips, speakers=2)
    make_synthetic_cache(tmp_path / "db", clips, shape=(4, 8, 8), std=0.0, scaling_factor=0.5)
    feats = tmp_path / "feats"
    feats.mkdir()
    for clip, n in clips.items():
        a = np.zeros((2 * n, 3, 5), np.float16)
        a[:, 0, :] = np.arange(2 * n)[:, None]
        np.save(feats / f"{clip}.npy", a)
    return tmp_path, clips


def make_ds(root: Path, **kw):
    from talk.data.windows import LatentDataset

    args = {"target_frames": 1, "motion_frames": 2, "audio_window": 10, "seed": 0, **kw}
    return LatentDataset(root / "db", root / "feats", root / "crops", splits="train", **args)


def test_dataset_items_shapes_and_frames(synthetic):
    from talk.data.windows import LatentDataset

    root, clips = synthetic
    ds = make_ds(root)
    assert len(ds) == sum(clips.values())
    assert ds.speakers == ["S0", "S1"]
    for index in range(len(ds)):
        item = ds[index]
        c, t = ds.locate(index)
        assert item["clip_id"] == list(clips)[c] and item["frame"] == t
        assert item["ref"].shape == (4, 8, 8) and item["motion"].shape == (2, 4, 8, 8)
        assert item["target"].shape == (1, 4, 8, 8) and item["audio"].shape == (1, 10, 3, 5)
        assert item["audio"].dtype == torch.float32
        frame_of = lambda z: int(round(float(z.mean()) / 0.5)) - 100 * c  # noqa: E731
        assert frame_of(item["target"][0]) == t
        assert [frame_of(m) for m in item["motion"]] == [max(t - 2, 0), max(t - 1, 0)]
        assert frame_of(item["ref"]) != t and 0 <= frame_of(item["ref"]) < clips[item["clip_id"]]
    same = LatentDataset.from_model(P.Model(), root / "db", root / "feats", root / "crops", "train")
    assert (same.F, same.M, same.k) == (1, 2, 10) and torch.equal(same[3]["target"], ds[3]["target"])
    first = ds[0]
    assert (first["emotion"], first["level"], first["speaker"]) == (0, 1, 0)  # c0: neutral 1, S0
    third = ds[clips["c0"] + clips["c1"]]
    assert (third["emotion"], third["level"], third["speaker"]) == (-1, 0, 0)  # c2: unlabelled, S0


def test_audio_window_indices():
    from talk.data.windows import audio_window_indices

    idx = audio_window_indices(np.array([0, 5, 9]), 10, 20)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # 2*0-4 .. 2*0+5, clamped
    assert idx[1].tolist() == list(range(6, 16))  # centred on 10, 11 (frame 5's own audio frames)
    assert idx[2].tolist() == [14, 15, 16, 17, 18, 19, 19, 19, 19, 19]
    assert audio_window_indices(np.array([3]), 4, 100)[0].tolist() == [5, 6, 7, 8]


def test_dataset_audio_window_content_and_multi_frame_targets(synthetic):
    root, _ = synthetic
    ds = make_ds(root, target_frames=3, motion_frames=1, audio_window=4)
    item = ds[2]  # clip c0, t = 2: targets 2, 3, 4
    assert item["target"].shape == (3, 4, 8, 8) and item["audio"].shape == (3, 4, 3, 5)
    got = item["audio"][:, :, 0, 0].int().tolist()
    assert got == [[3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10]]
    assert len(ds) == (10 - 2) + (7 - 2) + (12 - 2)
    ref = int(round(float(item["ref"].mean()) / 0.5))
    assert ref not in (2, 3, 4)


def test_dataset_sampling_is_deterministic_per_seed_epoch_index(tmp_path):
    clips = {"c0": 9, "c1": 9}
    make_manifest_only(tmp_path / "crops", clips)
    make_synthetic_cache(tmp_path / "db", clips, shape=(4, 8, 8), std=1.0, scaling_factor=1.0)
    (tmp_path / "feats").mkdir()
    for c in clips:
        np.save(tmp_path / "feats" / f"{c}.npy", np.zeros((18, 2, 3), np.float16))
    a, b = make_ds(tmp_path, seed=3), make_ds(tmp_path, seed=3)
    assert torch.equal(a[5]["target"], b[5]["target"]) and torch.equal(a[5]["ref"], b[5]["ref"])
    assert torch.equal(a[(2, 5)]["target"], b[(2, 5)]["target"])
    assert not torch.equal(a[(0, 5)]["target"], a[(1, 5)]["target"])  # a new epoch, new noise
    assert not torch.equal(a[5]["target"], make_ds(tmp_path, seed=4)[5]["target"])
    noise = torch.stack([a[(e, 5)]["target"] for e in range(50)]) - float(a.cache.read("c0", [5])[0, 0].mean())
    assert abs(float(noise.std()) - 1.0) < 0.05 and abs(float(noise.mean())) < 0.05


def test_multi_worker_loader_gives_the_same_batches(synthetic):
    from talk.data.windows import InfiniteSampler

    root, _ = synthetic
    ds = make_ds(root)

    def batches(workers: int) -> list:
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=InfiniteSampler(ds, seed=1),
                                             num_workers=workers)
        return list(itertools.islice(iter(loader), 5))

    one, two = batches(0), batches(2)
    for x, y in zip(one, two):
        assert x["clip_id"] == y["clip_id"] and torch.equal(x["frame"], y["frame"])
        assert torch.equal(x["target"], y["target"]) and torch.equal(x["audio"], y["audio"])


def test_infinite_sampler_resumes_and_covers_each_epoch():
    from talk.data.windows import InfiniteSampler

    full = list(itertools.islice(InfiniteSampler(7, seed=2), 30))
    assert sorted(i for _, i in full[:7]) == list(range(7)) and {e for e, _ in full[:7]} == {0}
    assert sorted(i for _, i in full[7:14]) == list(range(7)) and full[7][0] == 1
    assert list(itertools.islice(InfiniteSampler(7, seed=2, start_idx=11), 19)) == full[11:]
    ranks = [list(itertools.islice(InfiniteSampler(7, seed=2, rank=r, num_replicas=2), 7)) for r in (0, 1)]
    assert [x for pair in zip(*ranks) for x in pair] == full[:14]
    assert list(itertools.islice(InfiniteSampler(7, seed=3), 7)) != full[:7]


def test_dataset_errors(synthetic):
    root, _ = synthetic
    with pytest.raises(TalkError, match="made with VAE"):
        make_ds(root, vae_identity="another")
    with pytest.raises(TalkError, match="no clips of split"):
        from talk.data.windows import LatentDataset

        LatentDataset(root / "db", root / "feats", root / "crops", splits="test")
    (root / "feats" / "c1.npy").unlink()
    ds = make_ds(root)
    with pytest.raises(TalkError, match="audio features of clip c1"):
        ds[11]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_fit_vae_and_cache_outputs_have_the_umask_mode_and_their_sections(fitted):
    import stat

    import yaml

    root, *_ = fitted
    for folder in (root / "vae", root / "latents.lmdb"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file() and p.name != "lock.mdb"}
        assert modes and all(m == _umask_mode() for m in modes.values()), (folder, {k: oct(v) for k, v in modes.items()})
    want = {"vae": ["base", "paths", "model", "fit_vae"], "latents.lmdb": ["base", "paths", "model", "cache_latents"]}
    for folder, sections in want.items():
        assert list(yaml.safe_load((root / folder / "params.yaml").read_text())) == sections


def test_fit_vae_resumes_by_re_running(fitted, tmp_path):
    """Checkpoints in <paths.vae>/checkpoints survive the export: 30 + 30 steps = 60 straight."""
    from safetensors.torch import load_file

    from talk.stages import fit_vae

    root, *_ = fitted
    out = tmp_path / "vae"
    half = load_params(root, **{"paths.vae": out, "fit_vae.loop.steps": 30, "fit_vae.loop.lr_schedule": "constant"})
    fit_vae.run(half)
    assert [p.name for p in (out / "checkpoints").glob("*/step-*")] == ["step-0000030"]
    again = fit_vae.run(load_params(root, **{"paths.vae": out, "fit_vae.loop.lr_schedule": "constant"}))
    straight_out = tmp_path / "straight"
    straight = fit_vae.run(load_params(root, **{"paths.vae": straight_out, "fit_vae.loop.lr_schedule": "constant"}))
    a = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(straight_out / "diffusion_pytorch_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert again["val_psnr"] == pytest.approx(straight["val_psnr"], abs=1e-4)
    assert (out / "loss.tsv").read_text() == (straight_out / "loss.tsv").read_text()  # the whole curve, resumed
    with pytest.raises(TalkError, match="cosine learning-rate schedule"):  # the default cosine run ends at its steps
        fit_vae.run(load_params(root, **{"paths.vae": root / "vae", "fit_vae.loop.steps": 90}))
