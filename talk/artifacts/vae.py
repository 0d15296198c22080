"""The VAE artefact (fit_vae's output): a diffusers AutoencoderKL folder, its identity, and the
encode / decode helpers every later stage uses.

``<folder>/config.json`` (architecture + the measured ``scaling_factor``) and
``diffusion_pytorch_model.safetensors``. The identity (sha256 of config + weights) keys the latent
cache, so latents made with another VAE are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from talk.artifacts.files import load_safetensors, load_state, public_modes, read_json
from talk.core.errors import TalkError
from talk.core.fs import sha256_file

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
STAGE = "fit-vae"  # the command that writes this artefact


def vae_source_dir(source: str | Path) -> Path:
    """A local diffusers AutoencoderKL folder (or a pipeline folder holding one in ``vae/``)."""
    path = Path(source).expanduser()
    for cand in (path, path / "vae"):
        cfg = cand / CONFIG
        if cfg.is_file():
            try:
                cls = json.loads(cfg.read_text()).get("_class_name")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise TalkError(f"{cfg}: not valid JSON (damaged?)") from None
            if cls == "AutoencoderKL":
                return cand
    raise TalkError(
        f"model.vae.source: no diffusers AutoencoderKL folder at {path.resolve()} "
        f"(expected config.json with _class_name AutoencoderKL, here or in vae/)"
    )


def _canonical_config(config: dict) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if not k.startswith("_")}, sort_keys=True)


def vae_identity(path: Path | str) -> str:
    """sha256 of a saved VAE's config (scaling factor included) and weights file: the cache key."""
    path = Path(path)
    cfg, weights = path / CONFIG, path / WEIGHTS
    if not cfg.is_file() or not weights.is_file():
        raise TalkError(f"no VAE at {path}: expected {CONFIG} and {WEIGHTS} (run `talk {STAGE}`)")
    config = read_json(cfg, STAGE)
    h = hashlib.sha256(_canonical_config(config).encode())
    h.update(sha256_file(weights).encode())
    return h.hexdigest()


def vae_factor(vae) -> int:
    """Image px per latent px of a loaded VAE (a PatchAutoencoder or a diffusers AutoencoderKL)."""
    cfg = vae.config
    if "patch_size" in cfg:
        return int(cfg.patch_size)
    return 2 ** (len(cfg.block_out_channels) - 1)


def vae_class(name: str | None):
    """The model class of a saved VAE's ``_class_name`` (None for an unknown one)."""
    if name == "AutoencoderKL":
        from diffusers import AutoencoderKL

        return AutoencoderKL
    if name == "PatchAutoencoder":
        from talk.models.patch_vae import PatchAutoencoder

        return PatchAutoencoder
    return None


def save_vae(vae, path: Path) -> None:
    """diffusers folder: config.json (architecture + scaling_factor) + safetensors weights."""
    vae.save_pretrained(str(path), safe_serialization=True)
    public_modes(path)  # safetensors writes 0600


def load_vae(path: Path | str, device: Any = "cpu"):
    """-> (VAE in eval mode, scaling_factor, identity) from a folder saved by fit_vae.

    Built from its config.json and loaded strictly from its weights (a damaged file is one
    TalkError); the global RNG is left as it was (the random init is thrown away)."""
    import torch

    path = Path(path)
    identity = vae_identity(path)
    config = read_json(path / CONFIG, STAGE)
    cls = vae_class(config.get("_class_name"))
    if cls is None:
        raise TalkError(f"{path / CONFIG}: not a VAE config (AutoencoderKL or PatchAutoencoder); rebuild it with `talk {STAGE}`")
    state = load_safetensors(path / WEIGHTS, STAGE)
    with torch.random.fork_rng(devices=[]):
        try:
            vae = cls.from_config(config)
        except (TypeError, ValueError) as e:
            raise TalkError(f"{path / CONFIG}: not a buildable {cls.__name__} config ({e}); "
                            f"rebuild it with `talk {STAGE}`") from None
    load_state(vae, state, path / WEIGHTS, STAGE, path / CONFIG)
    vae = vae.to(device).eval().requires_grad_(False)
    return vae, float(vae.config.scaling_factor), identity


def _autocast(device, dtype: str):
    import contextlib

    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def encode_frames(vae, frames: np.ndarray, chunk: int = 32, autocast: str = "float32"):
    """uint8 frames (N, H, W, 3) -> posterior mean, std: float32 tensors (N, C, h, w) on the CPU.

    Unscaled (multiply by the scaling factor to get the diffusion model's latents).
    ``autocast``: float32, bfloat16 or float16 compute inside the encoder.
    """
    import torch

    dev = next(vae.parameters()).device
    means, stds = [], []
    with torch.inference_mode(), _autocast(dev, autocast):
        for i in range(0, len(frames), chunk):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk])).to(dev)  # (B, H, W, 3) uint8
            x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (B, 3, H, W) in [-1, 1]
            post = vae.encode(x).latent_dist
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def decode_latents(vae, z, chunk: int = 16, scaling_factor: float | None = None) -> np.ndarray:
    """Scaled latents (N, C, h, w) (as the diffusion model makes them) -> uint8 frames (N, H, W, 3).

    Decodes ``chunk`` latents at a time (bounded memory); ``scaling_factor`` defaults to the VAE's.
    """
    import torch

    s = float(vae.config.scaling_factor if scaling_factor is None else scaling_factor)
    dev = next(vae.parameters()).device
    z = torch.as_tensor(z)
    if z.ndim != 4:
        raise ValueError(f"decode_latents expects (N, C, h, w), got {tuple(z.shape)}")
    out = []
    with torch.inference_mode():
        for i in range(0, len(z), chunk):
            x = vae.decode(z[i : i + chunk].to(dev, torch.float32) / s).sample  # (B, 3, H, W) in [-1, 1]
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            out.append(x.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
