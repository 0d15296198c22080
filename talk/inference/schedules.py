"""Frame-generation schedules: which frames are denoised together, and what motion context they see.

The denoiser was trained to generate target frame t from the M frames t-M .. t-1 before it
(talk/data/windows.py). Two schedules feed it that context at render time (DICE-Talk §3.4 / SVP
§3.4 inference):

- ``rolling`` (default, frame backbone): diagonal denoising (FIFO-Diffusion, Kim et al. 2024). A
  queue holds ``steps`` consecutive frames at decreasing noise levels; each iteration moves every
  queued frame one Euler step down in ONE batched forward (all guidance branches of all rows), a
  finished frame leaves, a fresh one enters. Each frame's motion context is its own M previous
  frames: final latents, or the current denoised estimate of a frame still in the queue.
- ``window``: ``window`` frames (the clip backbone: exactly its F) are sampled in parallel by any
  sampler, all conditioned on the M frames before the window; consecutive windows may overlap
  (their shared latents are cross-faded).

Either way the motion context is re-anchored to the reference latent before use (``anchor``), so
errors cannot accumulate over long audio. Guidance (branches, weights, interval) is
``talk.models.sampling.GuidedDenoiser``'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.inference.config import RenderLoop, Settings


def audio_windows(feats, frames: Sequence[int], k: int):
    """Whisper windows of the given video frames: feats (2T, L, D) -> (F, k, L, D).

    The training data's indexing (``talk.data.windows.audio_window_indices``): video frame t owns
    encoder frames 2t and 2t+1 (docs/pipeline.md); its window is the k frames centred on that
    pair, indices clamped at the clip's ends.
    """
    import torch

    from talk.data.windows import audio_window_indices

    idx = audio_window_indices(np.asarray(list(frames)), k, feats.shape[0])  # (F, k)
    return feats[torch.from_numpy(idx).to(feats.device)].float()


def plan_windows(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows [start, stop) covering n frames; consecutive windows share ``overlap`` frames."""
    if n <= window:
        return [(0, n)]
    stride = window - overlap
    starts = list(range(0, n - window, stride)) + [n - window]
    out, prev = [], None
    for s in starts:
        if prev is not None and s <= prev[0]:
            continue
        out.append((s, s + window))
        prev = out[-1]
    return out


def frame_noise(spec, frames: Sequence[int], seed: int, shared: bool, device):
    """Unit noise (F, C, h, w) for the given frame indices, from per-frame (or one shared) seeds."""
    from talk.models.sampling import per_sample_noise

    c, s = spec.latent_channels, spec.latent_size
    seeds = [seed] * len(frames) if shared else [seed * 1_000_003 + t for t in frames]
    return per_sample_noise((len(frames), c, s, s), seeds, device)


AUG_SEED = 0x6A09E667  # mixes the render seed into the context-noise seeds


def context_aug(spec, sampling, frames: Sequence[int], seed: int, device) -> dict:
    """The noise-augmented context's conditions for the given frames (a denoiser trained with
    ``objective.context_aug``; else {}): ``aug`` (n,) the fixed σ ``sampling.context_aug`` and
    ``aug_noise`` (n, 1+M, C, h, w) unit noise seeded by (render seed, frame), so a render is the
    same for the same seed whatever the batch."""
    if not spec.context_aug:
        return {}
    import torch

    from talk.models.sampling import per_sample_noise

    c, s, m = spec.latent_channels, spec.latent_size, spec.motion_frames
    seeds = [(seed * 1_000_003 + t) ^ AUG_SEED for t in frames]
    noise = per_sample_noise((len(frames), 1 + m, c, s, s), [x % 2**63 for x in seeds], device)
    return {"aug": torch.full((len(frames),), float(sampling.context_aug), device=device), "aug_noise": noise}


def anchor_motion(motion, ref, loop: RenderLoop):
    """Re-anchor the motion context (M, C, h, w) to the reference latent (C, h, w): its per-channel
    mean reset to the reference's (``anchor_colour``), then blended towards it (``anchor``)."""
    if loop.anchor_colour:
        motion = motion - motion.mean((-1, -2), keepdim=True) + ref.mean((-1, -2), keepdim=True)
    if loop.anchor > 0:
        motion = motion.lerp(ref.expand_as(motion), loop.anchor)
    return motion


def generate_latents(guided, spec, sigmas, ref, feats, n_frames: int, z, style, s: Settings,
                     device) -> Iterator[tuple[int, Any]]:
    """Yield (first frame index, latents (n, C, h, w)) as frames become final, in order.

    guided: the ``GuidedDenoiser`` (its guidance interval included); spec: the denoiser's
    DenoiserSpec; sigmas (steps + 1,) noise levels; ref (C, h, w) reference latent; feats (2T, L, D)
    Whisper states; z (E,) emotion embedding; style (S,) or None.
    """
    if s.loop.schedule == "rolling" and spec.denoiser.backbone != "clip":
        return rolling(guided, spec, sigmas, ref, feats, n_frames, z, style, s, device)
    return windows(guided, spec, sigmas, ref, feats, n_frames, z, style, s, device)


def windows(guided, spec, sigmas, ref, feats, n_frames: int, z, style, s: Settings, device) -> Iterator[tuple[int, Any]]:
    """``window`` schedule: windows of ``loop.window`` frames (clip backbone: its F) sampled in one
    batch each by ``sampling.sampler``; the M frames before a window are its motion context
    (re-anchored); frames shared with the previous window are cross-faded linearly."""
    import torch

    from talk.models import sampling

    loop, M = s.loop, spec.motion_frames
    clip = spec.denoiser.backbone == "clip"
    W = spec.target_frames if clip else loop.window
    plan = plan_windows(n_frames, W, min(loop.overlap, W - 1))
    gen = torch.Generator(device=device).manual_seed(loop.seed)  # ancestral samplers' fresh noise
    ref_b, z_b = ref[None], z[None].float()  # (1, C, h, w), (1, E)
    style_b = style[None].float() if style is not None else None
    out: dict[int, Any] = {}  # frame -> latent (C, h, w), kept while a later window may need it
    done = 0  # frames [0, done) are final and yielded
    for wi, (a, e) in enumerate(plan):
        idx = list(range(a, e))
        if clip and len(idx) < W:  # a clip backbone denoises exactly F frames: repeat the last one
            idx += [idx[-1]] * (W - len(idx))
        with torch.inference_mode():  # (a generator: the mode is not held across yields)
            motion = None
            if M:
                motion = torch.stack([out[u] if u >= 0 else ref for u in range(a - M, a)])  # (M, C, h, w); the reference before frame 0
                if a > 0:
                    motion = anchor_motion(motion, ref, loop)
                motion = motion[None]  # (1, M, C, h, w)
            noise = frame_noise(spec, idx, loop.seed, loop.shared_noise, device)[None]  # (1, F, C, h, w)
            audio = audio_windows(feats, idx, spec.audio_window)[None]  # (1, F, k, L, D)
            extra = {"ref": ref_b, "motion": motion, "audio": audio, "emotion": z_b, "style": style_b,
                     **context_aug(spec, s.sampling, [a], loop.seed, device)}
            if spec.residual:  # a residual denoiser starts from the reference + noise
                noise = noise + ref_b[:, None] / sigmas[0]
            lat = sampling.sample(guided, noise, sigmas, s.sampling.sampler, extra_args=extra, generator=gen)[0, : e - a]
            shared = (plan[wi - 1][1] - a) if wi else 0  # frames the previous window also produced
            if shared > 0:
                ramp = torch.linspace(0, 1, shared + 2, device=lat.device)[1:-1].view(-1, 1, 1, 1)
                lat[:shared] = torch.lerp(torch.stack([out[u] for u in range(a, a + shared)]), lat[:shared], ramp)
            out.update({a + j: lat[j] for j in range(e - a)})
        final = plan[wi + 1][0] if wi + 1 < len(plan) else n_frames  # later windows never touch these
        if final > done:
            yield done, torch.stack([out[u] for u in range(done, final)])
            done = final
            for u in [u for u in out if u < done - M]:  # no later window reads these
                del out[u]


def rolling(guided, spec, sigmas, ref, feats, n_frames: int, z, style, s: Settings, device) -> Iterator[tuple[int, Any]]:
    """``rolling`` schedule (frame backbone): diagonal denoising, one Euler step of every queued frame
    per batched forward; a row is guided when its own step is (``guided.guided_at``). Cost per
    frame: one row per step, as in window mode."""
    import torch

    if s.sampling.sampler != "euler":
        raise TalkError(f"render.schedule rolling steps every frame with Euler; sampler '{s.sampling.sampler}' needs schedule: window (`talk render --schedule window`)")
    loop, M, S = s.loop, spec.motion_frames, s.sampling.steps
    out: dict[int, Any] = {}  # frame -> final latent (C, h, w), until yielded and no longer motion context
    x: dict[int, Any] = {}  # frame -> current noisy latent (C, h, w)
    est: dict[int, Any] = {}  # frame -> latest denoised estimate
    level: dict[int, int] = {}  # frame -> steps taken
    entered = done = yielded = 0
    while done < n_frames:
        with torch.inference_mode():
            if entered < n_frames:
                x[entered] = frame_noise(spec, [entered], loop.seed, loop.shared_noise, device)[0] * sigmas[0]
                if spec.residual:  # a residual denoiser starts from the reference + noise
                    x[entered] = x[entered] + ref
                level[entered] = 0
                entered += 1
            rows = sorted(x)
            motions = []
            for t in rows:
                ctx = [ref if u < 0 else (out[u] if u < done else est[u]) for u in range(t - M, t)]
                m = torch.stack(ctx) if M else None  # (M, C, h, w)
                motions.append(anchor_motion(m, ref, loop) if M and t > 0 else m)
            b = len(rows)
            sig = torch.stack([sigmas[level[t]] for t in rows])  # (b,)
            cond = {"ref": ref.expand(b, *ref.shape), "motion": torch.stack(motions) if M else None,
                    "audio": audio_windows(feats, rows, spec.audio_window)[:, None],  # (b, 1, k, L, D)
                    "emotion": z[None].float().expand(b, -1),
                    "style": style[None].float().expand(b, -1) if style is not None else None,
                    **context_aug(spec, s.sampling, rows, loop.seed, device)}
            xs = torch.stack([x[t] for t in rows])[:, None]  # (b, 1, C, h, w)
            den = guided(xs, sig, guided=[guided.guided_at(level[t]) for t in rows], **cond)
            for j, t in enumerate(rows):
                lv = level[t]
                d = (xs[j, 0] - den[j, 0]) / sigmas[lv]
                x[t] = xs[j, 0] + d * (sigmas[lv + 1] - sigmas[lv])
                est[t] = den[j, 0]
                level[t] = lv + 1
                if level[t] == S:  # finished frames leave in order
                    out[t] = x.pop(t)
                    del est[t], level[t]
                    done = t + 1
        if done - yielded >= loop.decode_batch or done == n_frames:
            yield yielded, torch.stack([out[u] for u in range(yielded, done)])
            yielded = done
            for u in [u for u in out if u < done - M]:
                del out[u]
