"""Benchmark: the full profile on one GPU against DICE-Talk's arrangement (issue 18), in <= 5 minutes.

Every model is built by the project's own code (``talk.training.diffusion.make_spec``,
``talk.artifacts.denoiser.build_denoiser``, ``talk.models.denoiser.make_backbone`` /
``expand_conv_in``), every figure is measured through the code the stages run
(``TalkPipeline.generate_latents`` -> talk/inference/schedules.py -> models/sampling.py,
``TalkPipeline.decode``, ``frames.paste_frame``, ``Trainer.train_step`` with train_diffusion's
``Objective``, ``encode_audio``, ``cropping.process_clip``), so the figures cannot drift from them.
Weights are random (speed does not depend on them); no file is downloaded. Each figure is printed
as a ratio against a baseline measured in the same run:

- render, 512 px, one 25-frame window: seconds per output frame and peak GPU memory of
  (b) ``profiles/full.yaml`` as shipped (its sampler, steps, guidance scales and interval, branches
  batched in one forward, ``render.precision: auto`` = bf16 autocast, SDPA attention) and of
  (b) + ``torch.compile`` of the UNet, against (a) DICE-Talk's arrangement: an SVD-xt UNet
  (``SVD_XT_UNET``: diffusers' config of stabilityai/stable-video-diffusion-img2vid-xt, written out
  here) widened like a pretrained SVD by ``expand_conv_in``, 25 Euler steps (--tiny: 6), every step guided with
  3 branches (nothing / reference / reference+audio+emotion), fp16 autocast;
- VAE decode (SD VAE, ``SD_VAE``) and face paste-back into a 1920x1080 picture: per frame, against
  (b)'s sampling per frame;
- training: train_diffusion's step on the full profile (AdamW, EMA, bf16, grad clipping) with
  gradient checkpointing on and off, at the largest batch whose peak memory fits 24, 40 and 80 GB:
  steps/s, samples/s, peak memory, and the achieved fraction of the bf16 matmul rate measured here
  (FLOPs counted by ``torch.utils.flop_counter``, recomputation included);
- Whisper features (``encode_audio``, Whisper-tiny dimensions) against the stock per-30-s encoder;
  crop_align (``process_clip``) against PyAV decoding of the same clip; insightface's SCRFD through
  onnxruntime-gpu when a pack and the CUDA provider are there, else the dlib CPU path (stated).

``--tiny`` runs the same code paths on the CPU at tiny sizes in well under a minute (CI runs it:
tests/test_gpu_bench.py); its figures say nothing about a GPU.

    .venv/bin/python benchmarks/gpu.py              # on a CUDA machine
    .venv/bin/python benchmarks/gpu.py --tiny       # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# diffusers' unet/config.json of stabilityai/stable-video-diffusion-img2vid-xt (architecture keys)
SVD_XT_UNET = dict(
    sample_size=96,
    in_channels=8,
    out_channels=4,
    down_block_types=["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    up_block_types=["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    block_out_channels=[320, 640, 1280, 1280],
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=[5, 10, 20, 20],
    num_frames=25,
)
# diffusers' vae/config.json of stabilityai/sd-vae-ft-mse (the full profile's model.vae.source)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
# --tiny: the same structures at toy widths (overrides of profiles/full.yaml, then of the two configs)
TINY_SETS = [
    "model.image_size=64", "model.target_frames=4", "model.audio_window=4",
    "model.denoiser.block_out_channels=[32,32,32,32]", "model.denoiser.attention_head_dim=16",
    "model.denoiser.cross_attention_dim=32", "model.denoiser.addition_time_embed_dim=8",
    "model.conditioning.audio_tokens=2", "model.conditioning.audio_hidden=8", "model.conditioning.style_tokens=2",
    "model.prior.emb_dim=8", "model.prior.audio_layers=2", "model.prior.audio_dim=16",
    "model.bank.emb_dim=8", "model.bank.n_codes=4", "model.bank.code_dim=16", "model.bank.attn_heads=2",
    "model.bank.n_queries=2", "model.bank.n_tokens=2", "model.bank.token_dim=16",
    "train_diffusion.sampling.steps=4",
]
TINY_UNET = dict(SVD_XT_UNET, block_out_channels=[32, 32, 32, 32], num_attention_heads=[2, 2, 2, 2],
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, cross_attention_dim=32,
                 num_frames=4)
TINY_VAE = dict(SD_VAE, block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8)
CAPS_GB = (24, 40, 80)  # training memory caps


class Bench:
    """Device, synchronisation, timing, peak memory, and the time budget."""

    def __init__(self, device: str, tiny: bool, budget_s: float):
        import torch

        self.torch, self.device, self.tiny = torch, torch.device(device), tiny
        self.cuda = self.device.type == "cuda"
        self.t_end = time.perf_counter() + budget_s
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.t_end - time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn):
        """(wall s, result) of one call, the device synchronised before and after."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        """Peak GPU memory reserved since ``reset_peak`` (GB); on the CPU the process's peak RSS."""
        if self.cuda:
            return self.torch.cuda.max_memory_reserved() / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    @property
    def mem_label(self) -> str:
        return "peak GPU GB" if self.cuda else "peak RSS GB (process)"


def load_params(tiny: bool):
    from talk.core import params as P

    return P.load(ROOT / "profiles" / "full.yaml", TINY_SETS if tiny else [])


def shapes(params) -> dict:
    m = params.model
    side = m.image_size // m.vae.downsampling()
    c, f = m.vae.latent_channels, m.target_frames
    return {"ref": (c, side, side), "target": (f, c, side, side), "motion": (m.motion_frames, c, side, side),
            "audio": (f, m.audio_window, m.prior.audio_layers, m.prior.audio_dim)}


def make_spec(params):
    """The full profile's DenoiserSpec, by train_diffusion's own ``make_spec`` (random init: no weights)."""
    from talk.training.diffusion import make_spec as stage_spec

    m = params.model
    model = dataclasses.replace(m, denoiser=dataclasses.replace(m.denoiser, pretrained=""))
    style_dim = m.prior.emb_dim if "style" in m.prior.heads else 0
    return stage_spec(model, shapes(params), m.bank, style_dim)


def build_model(params, spec, device="cpu", svd: dict | None = None):
    """TalkDenoiser of ``spec``, created on ``device`` (a 2.8 B-parameter random init is slow on a
    CPU); ``svd``: on that backbone config, widened as a pretrained SVD is."""
    import torch

    from talk.artifacts.denoiser import build_denoiser
    from talk.models.denoiser import expand_conv_in, make_backbone
    from talk.models.emotion_bank import EmotionBank

    torch.manual_seed(0)
    with torch.device(device):
        backbone = expand_conv_in(make_backbone("clip", svd), spec.in_channels) if svd is not None else None
        return build_denoiser(spec, EmotionBank(params.model.bank), backbone)


def make_vae(b: Bench):
    from diffusers import AutoencoderKL

    b.torch.manual_seed(0)
    with b.torch.device(b.device):
        return AutoencoderKL.from_config(TINY_VAE if b.tiny else SD_VAE).eval().requires_grad_(False)


def svd_xt_diff(ours: dict, svd: dict) -> dict:
    """Architecture keys where the full profile's backbone config differs from SVD-xt's
    ({key: (SVD-xt, ours)}; keys ours leaves out take diffusers' defaults)."""
    import inspect

    from diffusers import UNetSpatioTemporalConditionModel

    defaults = {k: p.default for k, p in inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters.items()}

    def norm(v):
        return list(v) if isinstance(v, (list, tuple)) else v

    return {k: (svd[k], norm(ours.get(k, defaults.get(k)))) for k in svd if norm(svd[k]) != norm(ours.get(k, defaults.get(k)))}


def whisper_model(params, device):
    """An openai-whisper model of the profile's encoder dimensions (tiny: 4 layers x 384), random weights."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    m = params.model.prior
    torch.manual_seed(0)
    heads = 6 if m.audio_dim == 384 else max(1, m.audio_dim // 8)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=m.audio_dim, n_audio_head=heads,
                           n_audio_layer=m.audio_layers - 1, n_vocab=64, n_text_ctx=8, n_text_state=m.audio_dim,
                           n_text_head=heads, n_text_layer=1)
    return Whisper(dims).eval().requires_grad_(False).to(device)


def make_pipeline(params, model, vae, whisper, device):
    from talk.inference.config import Settings, loop_of
    from talk.inference.pipeline import TalkPipeline
    from talk.models.denoiser import make_schedule

    model = model.to(device).eval().requires_grad_(False)
    settings = Settings(params.train_diffusion.sampling, loop_of(params.render))
    return TalkPipeline(vae=vae, vae_scale=float(vae.config.scaling_factor), prior=types.SimpleNamespace(presets={}),
                        denoiser=model, schedule=make_schedule(model.spec).to(device), whisper=whisper,
                        settings=settings, chunking=dict(params.audio_features.chunking), device=device)


def render_inputs(pipe, params, device):
    import torch

    spec = pipe.spec
    g = torch.Generator().manual_seed(0)
    f = spec.target_frames
    c, s = spec.latent_channels, spec.latent_size
    ref = torch.randn(c, s, s, generator=g).to(device)
    feats = torch.randn(2 * f, spec.audio_layers, spec.audio_dim, generator=g).half().to(device)
    z = torch.randn(spec.emotion_dim, generator=g).to(device)
    return ref, feats, f, z


def window_time(b: Bench, pipe, settings, inputs) -> tuple[float, float, int]:
    """(s per frame, peak memory, rows per window) of one window through ``generate_latents``; a
    3-step warm-up of the same shapes first (kernel selection, compilation of both batch sizes)."""
    import torch

    from talk.models.sampling import guidance_branches, guidance_interval

    ref, feats, n, z = inputs

    def run(s):
        return torch.cat([lat for _, lat in pipe.generate_latents(ref, feats, n, z, None, s)])

    run(settings.replace(steps=3))
    b.reset_peak()
    t, lat = b.timed(lambda: run(settings))
    smp = settings.sampling
    scales = {k: v for k, v in smp.scales().items() if k != "style"}
    guided = guidance_interval(smp.steps, smp.guidance_from, smp.guidance_to)
    rows = len(guided) * len(guidance_branches(scales, ("ref", "audio", "emotion"))) + smp.steps - len(guided)
    assert lat.shape[0] == n and bool(torch.isfinite(lat).all())
    return t / n, b.peak_gb(), rows


def render_section(b: Bench, params, out: dict) -> None:
    import numpy as np
    import torch

    from talk.inference.frames import feather_mask, paste_frame
    from talk.models.denoiser import backbone_config

    dev = b.device
    spec = make_spec(params)
    svd = TINY_UNET if b.tiny else SVD_XT_UNET
    ours = backbone_config(spec)
    out["backbone_vs_svd_xt"] = svd_xt_diff(ours, svd)
    vae = make_vae(b)
    whisper = whisper_model(params, dev)
    res = {}
    # (a) DICE-Talk's arrangement
    model = build_model(params, spec, dev, svd)
    out["denoiser_params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    pipe = make_pipeline(params, model, vae, whisper, dev)
    inputs = render_inputs(pipe, params, dev)
    prec = "float16" if b.cuda else "float32"  # (fp16 autocast on a CPU is slower than float32)
    steps = 6 if b.tiny else 25
    dice = pipe.settings.replace(steps=steps, sampler="euler", guidance_ref=2.5, guidance_audio=6.0, guidance_emotion=6.0,
                                 guidance_from=0.0, guidance_to=1.0, schedule="window", precision=prec)
    res[f"(a) DICE-Talk: SVD-xt, {steps} Euler steps x 3 branches, {prec}"] = window_time(b, pipe, dice, inputs)
    del pipe, model
    b.reset_peak()
    # (b) the full profile as shipped (+ torch.compile: compile_section, last)
    model = build_model(params, spec, dev)
    pipe = make_pipeline(params, model, vae, whisper, dev)
    shipped = pipe.settings
    smp = shipped.sampling
    label = (f"(b) full profile: {smp.steps} {smp.sampler} steps, guided {smp.guidance_from}-{smp.guidance_to}, "
             f"precision {shipped.loop.precision}")
    res[label] = window_time(b, pipe, shipped, inputs)
    base_b = res[label][0]
    out["render"] = render_rows(res)
    out["_render_raw"] = res
    # VAE decode and paste-back, per frame, against (b)'s sampling per frame
    n = spec.target_frames
    lat = torch.randn(n, spec.latent_channels, spec.latent_size, spec.latent_size).to(dev)
    dec = {}
    for label, ctx in (("VAE decode (SD VAE, float32, as shipped)", None),
                       ("VAE decode under bf16 autocast (not shipped)", torch.bfloat16)):
        try:
            with torch.autocast(dev.type, dtype=ctx) if ctx is not None else contextlib.nullcontext():
                pipe.decode(lat[:2])
                b.reset_peak()
                t, crops = b.timed(lambda: pipe.decode(lat))
            dec[label] = {"s_per_frame": round(t / n, 5), "x (b) sampling": round(t / n / base_b, 3), "mem_GB": round(b.peak_gb(), 2)}
        except torch.cuda.OutOfMemoryError:
            dec[label] = {"s_per_frame": f"OOM at render.decode_batch {pipe.settings.loop.decode_batch}"}
            b.reset_peak()
    S = pipe.image_size
    H, W = (1080, 1920) if not b.tiny else (120, 160)
    picture = np.full((H, W, 3), 127, np.uint8)
    box = 0.45 * H  # the crop's side in picture px (box crop: face box + 50 % each side)
    x0, y0 = (W - box) / 2, (H - box) / 2
    M = np.array([[S / box, 0, -S / box * x0], [0, S / box, -S / box * y0]], np.float32)  # picture px -> crop px
    mask = feather_mask(S, params.render.feather)
    t0 = time.perf_counter()
    crops = np.full((n, S, S, 3), 100, np.uint8)  # (the decoded frames' shape; their content does not change the cost)
    for f in crops:
        paste_frame(f, picture, M, mask)
    t_paste = time.perf_counter() - t0
    out["per_frame"] = [*({"what": k, **v} for k, v in dec.items()),
                        {"what": f"paste-back into {W}x{H} (CPU, OpenCV)", "s_per_frame": round(t_paste / n, 5),
                         "x (b) sampling": round(t_paste / n / base_b, 3)}]
    del pipe, model, vae
    b.reset_peak()


def render_rows(res: dict) -> list[dict]:
    base = res[next(iter(res))]
    return [{"what": k, "s_per_frame": round(v[0], 5), "x (a) time": round(v[0] / base[0], 3),
             "mem_GB": round(v[1], 2), "x (a) memory": round(v[1] / base[1], 3) if base[1] else None,
             "denoiser rows per window": v[2]} for k, v in res.items()]


def compile_section(b: Bench, params, out: dict) -> None:
    """(b) again with the UNet under ``torch.compile`` (last: its compilation is the longest
    single item); added to the render table, with the compilation time."""
    if not b.cuda:
        b.skipped.append("render (b) + torch.compile: GPU only (inductor on the CPU compiles C++ for minutes)")
        return
    if b.left() < 120:
        b.skipped.append(f"render (b) + torch.compile: {b.left():.0f} s of the time budget left (< 120 s)")
        return
    spec = make_spec(params)
    pipe = make_pipeline(params, build_model(params, spec, b.device), make_vae(b), whisper_model(params, b.device), b.device)
    pipe.denoiser.backbone.compile()
    t0 = time.perf_counter()
    res = dict(out.get("_render_raw", {}))
    res["(b) + torch.compile (UNet)"] = window_time(b, pipe, pipe.settings, render_inputs(pipe, params, b.device))
    out["compile_warmup_and_window_s"] = round(time.perf_counter() - t0, 1)
    out["render"] = render_rows(res)
    del pipe
    b.reset_peak()


def matmul_rate(b: Bench) -> float:
    """Measured dense matmul FLOP/s: bf16 8192² on a GPU, fp32 256² on the CPU (--tiny)."""
    import torch

    n, dtype = (256, torch.float32) if not b.cuda else (8192, torch.bfloat16)
    x, y = torch.randn(n, n, device=b.device, dtype=dtype), torch.randn(n, n, device=b.device, dtype=dtype)
    for _ in range(3):
        x @ y
    best = min(b.timed(lambda: [x @ y for _ in range(10)])[0] for _ in range(3)) / 10
    return 2 * n**3 / best


def embeddings(n_clips: int, emb: int, style: int):
    import numpy as np

    from talk.artifacts.prior import ClipEmbeddings

    e = ClipEmbeddings.__new__(ClipEmbeddings)  # the real class, filled in memory (no npz file)
    r = np.random.default_rng(0)
    e.path, e.index = Path("<benchmark>"), {f"clip{i}": i for i in range(n_clips)}
    e.mu, e.logvar = r.normal(size=(n_clips, emb)).astype("float32"), np.full((n_clips, emb), -2.0, "float32")
    e.style_mu = r.normal(size=(n_clips, style)).astype("float32") if style else None
    e.style_logvar = np.full((n_clips, style), -2.0, "float32") if style else None
    return e


def train_section(b: Bench, params, out: dict) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from talk.models.denoiser import make_schedule
    from talk.training.diffusion import Objective
    from talk.training.trainer import Trainer

    rate = matmul_rate(b)
    out["matmul_TFLOPs"] = round(rate / 1e12, 2)
    spec = make_spec(params)
    cfg = params.train_diffusion
    model = build_model(params, spec, b.device)
    loop = dataclasses.replace(cfg.loop, batch_size=1, workers=0)
    tmp = tempfile.TemporaryDirectory(prefix="talk-gpu-bench-")
    trainer = Trainer(loop, model, Path(tmp.name), {}, 0, str(b.device), name="bench")
    objective = Objective(cfg.objective, make_schedule(spec).to(trainer.device), embeddings(4, spec.emotion_dim, spec.style_dim),
                          style=model.cond.style is not None)
    out["train_precision"] = trainer.accelerator.mixed_precision
    sh = shapes(params)

    def batch(n):
        g = torch.Generator().manual_seed(n)
        d = {k: torch.randn((n, *s), generator=g).to(trainer.device) for k, s in sh.items()}
        d["clip_id"] = [f"clip{i % 4}" for i in range(n)]
        return d

    sizes = [1] if b.tiny else [1, 2, 4, 8, 16, 32, 64]
    cap_max = max(CAPS_GB) * 1e9
    rows = []
    for ckpt in (True, False):
        backbone = trainer.unwrapped.backbone
        backbone.enable_gradient_checkpointing() if ckpt else backbone.disable_gradient_checkpointing()
        flops_per_sample, step_s = None, 0.0
        for n in sizes:
            reserve = 5 if b.tiny else 60 + 60 * ckpt  # audio + crop (and, before it, the ckpt-off pass) still to run
            need = 4 * 2 * step_s  # the next batch is twice as big: warm-up + 2 timed steps (+ slack)
            if b.left() - reserve < need:
                b.skipped.append(f"train ckpt={'on' if ckpt else 'off'} batch {n}+: time budget ({b.left():.0f} s left)")
                break
            data = batch(n)
            try:
                if not b.tiny or flops_per_sample is not None:  # (tiny: the counted step is the warm-up)
                    trainer.train_step(data, objective)  # warm-up (optimizer state allocated)
                if flops_per_sample is None:
                    with FlopCounterMode(display=False) as counter:
                        trainer.train_step(data, objective)
                    flops_per_sample = counter.get_total_flops() / n
                b.reset_peak()
                steps = 1 if b.tiny else 2
                t, _ = b.timed(lambda: [trainer.train_step(data, objective) for _ in range(steps)])
            except torch.cuda.OutOfMemoryError:
                rows.append({"checkpointing": ckpt, "batch": n, "fits": "OOM"})
                b.reset_peak()
                break
            step_s = t / steps
            peak = b.peak_gb()
            rows.append({"checkpointing": ckpt, "batch": n, "steps_per_s": round(1 / step_s, 3),
                         "samples_per_s": round(n / step_s, 3), "mem_GB": round(peak, 2),
                         "TFLOP_per_step": round(flops_per_sample * n / 1e12, 3),
                         "x matmul rate": round(flops_per_sample * n / step_s / rate, 3)})
            if b.cuda and peak * 1e9 > cap_max:
                break
    out["train_runs"] = rows
    table = []
    for ckpt in (True, False):
        for cap in CAPS_GB:
            fit = [r for r in rows if r["checkpointing"] == ckpt and "mem_GB" in r and (not b.cuda or r["mem_GB"] <= cap)]
            best = max(fit, key=lambda r: r["batch"]) if fit else None
            table.append({"cap_GB": cap, "checkpointing": ckpt, **(best or {"batch": "none fits"})})
    out["train"] = table
    trainer.accelerator.free_memory()
    del trainer, model
    tmp.cleanup()
    b.reset_peak()


def audio_section(b: Bench, params, out: dict) -> None:
    import numpy as np
    import torch
    import whisper as openai_whisper

    from talk.audio.features import encode_audio

    model = whisper_model(params, b.device)
    seconds = 4.0 if b.tiny else 120.0
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    n = int(seconds * 25)
    chunking = dict(params.audio_features.chunking)

    def ours(precision):
        return encode_audio(audio, n, model, **{**chunking, "precision": precision})

    def stock():  # what whisper / HF do: each 30 s window zero-padded to 30 s, last state only
        with torch.inference_mode():
            for s in range(0, len(audio), 30 * 16000):
                mel = openai_whisper.log_mel_spectrogram(openai_whisper.pad_or_trim(torch.from_numpy(audio[s : s + 30 * 16000])),
                                                         model.dims.n_mels, device=b.device)
                model.encoder(mel[None]).float().cpu()

    res = {}
    for label, fn in (("stock encoder per 30 s window", stock), ("encode_audio float32", lambda: ours("float32")),
                      (f"encode_audio {chunking['precision']} (as shipped)", lambda: ours(chunking["precision"]))):
        fn()
        res[label] = seconds / b.timed(fn)[0]
    base = res[next(iter(res))]
    out["audio"] = [{"what": k, "x real time": round(v, 1), "x stock": round(v / base, 2)} for k, v in res.items()]
    out["audio_note"] = f"{seconds:.0f} s of audio, Whisper encoder {model.dims.n_audio_layer} layers x {model.dims.n_audio_state}"


def crop_section(b: Bench, params, out: dict) -> None:
    import dataclasses as dc

    import av
    import numpy as np

    from talk.media import cropping, faces
    from test_crop_align import moving_face, write_video

    cfg = params.crop_align
    face = cfg.face
    pack = Path(face.insightface_root) / "models" / face.insightface_pack
    try:
        import onnxruntime

        cuda_ort = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        cuda_ort = False
    if face.detector == "insightface" and pack.is_dir() and any(pack.glob("det_*.onnx")) and cuda_ort:
        how = f"insightface SCRFD ({pack}) on onnxruntime CUDAExecutionProvider"
    else:
        why = "no CUDAExecutionProvider in onnxruntime" if not cuda_ort else f"no insightface pack at {pack}"
        how = f"dlib HOG + 68 landmarks on the CPU ({why})"
        face = dc.replace(face, detector="dlib")
        cfg = dc.replace(cfg, face=face)
    with tempfile.TemporaryDirectory(prefix="talk-gpu-bench-crop-") as tmp:
        tmp = Path(tmp)
        n = 25 if b.tiny else 75
        kw = {} if b.tiny else {"hw": (1080, 1920), "px": 640}
        frames, _ = moving_face(n, lambda t: (8 * np.sin(t / 9), 5 * np.cos(t / 11)), **kw)
        video = write_video(tmp / "clip.mp4", frames, audio_seconds=n / 25)

        def decode():
            with av.open(str(video)) as c:
                for fr in c.decode(c.streams.video[0]):
                    fr.to_ndarray(format="rgb24")

        tracker = faces.FaceTracker(face)
        row = {"clip_id": "bench", "video_path": str(video), "audio_path": str(video)}
        t_dec, _ = b.timed(decode)
        t_stage, result = b.timed(lambda: cropping.process_clip(row, cfg, params.model.image_size, tracker, tmp / "crops"))
        h, w = frames.shape[1:3]
    out["crop_align"] = [{"what": "PyAV decode to RGB", "fps": round(n / t_dec, 1), "x decode": 1.0},
                         {"what": f"crop_align process_clip ({w}x{h} -> {params.model.image_size} px)",
                          "fps": round(n / t_stage, 1), "x decode": round(t_dec / t_stage, 3),
                          "out frames": sum(int(r["n_frames"]) for r in result.rows)}]
    out["crop_align_detector"] = how


def print_report(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    con.print(f"[bold]benchmarks/gpu.py[/] {'--tiny (CPU smoke run: NOT GPU figures)' if out['tiny'] else ''}")
    for k in ("device", "torch", "cuda", "diffusers", "mem_GB_is", "denoiser_params_M", "backbone_vs_svd_xt", "compile_warmup_and_window_s",
              "matmul_TFLOPs", "train_precision", "audio_note", "crop_align_detector", "skipped", "section_s", "seconds"):
        if k in out:
            con.print(f"{k}: {out[k]}")
    for key, title in (("render", "render, one window (ratios: x (a) DICE-Talk's arrangement)"),
                       ("per_frame", "per-frame costs (ratio: x (b)'s sampling per frame)"),
                       ("train", "train_diffusion step, largest batch under each memory cap (ratio: x measured matmul rate)"),
                       ("train_runs", "train_diffusion step, every batch tried"),
                       ("audio", "Whisper features (ratio: x stock encoder)"),
                       ("crop_align", "crop_align (ratio: x PyAV decode)")):
        rows = out.get(key)
        if not rows:
            continue
        cols = list(dict.fromkeys(c for r in rows for c in r))
        t = Table(title=title)
        for c in cols:
            t.add_column(c, justify="left" if c == "what" else "right")
        for r in rows:
            t.add_row(*(str(r.get(c, "")) for c in cols))
        con.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (CI smoke run)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--budget", type=float, default=None, help="s before optional parts are skipped (default 270; --tiny: none, every part runs)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated (in this order)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; run it on a GPU machine, or --tiny for the CPU smoke run",
              file=sys.stderr)
        sys.exit(2)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"benchmarks/gpu.py: unknown section(s) {sorted(unknown)}", file=sys.stderr)
        sys.exit(2)
    import diffusers

    b = Bench(device, args.tiny, args.budget or (float("inf") if args.tiny else 270.0))
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(b.device) if b.cuda else "CPU"
    out = {"tiny": args.tiny, "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "diffusers": diffusers.__version__}
    out["mem_GB_is"] = b.mem_label
    params = load_params(args.tiny)
    out["section_s"] = {}
    for s in sections:
        t1 = time.perf_counter()
        SECTIONS[s](b, params, out)
        out["section_s"][s] = round(time.perf_counter() - t1, 1)
    out.pop("_render_raw", None)
    out["skipped"] = b.skipped
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


SECTIONS = {"render": render_section, "train": train_section, "audio": audio_section, "crop": crop_section,
            "compile": compile_section}  # run in this order: the optional torch.compile variant last


if __name__ == "__main__":
    main()
