"""The prior artefact (pretrain_prior's output): config.json + model.safetensors (the embedders and
the Emotion Bank), presets.safetensors (one Gaussian per emotion / level / speaker) and
clip_embeddings.npz (every clip's Gaussians), with their loaders."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from talk.artifacts.files import load_npz, load_safetensors, load_state, parse_saved, read_config, save_safetensors
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_path
from talk.models.emotions import EMOTIONS
from talk.models.prior_config import EmotionBankConfig, PriorConfig

if TYPE_CHECKING:
    import torch

    from talk.models.prior import PriorModel


FORMAT = "talk-prior"
VERSION = 1
PRESETS_FORMAT = "talk-presets"
STAGE = "pretrain-prior"  # the command that writes this artefact


def save_presets(path: Path, presets: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    """``name -> (mean, logvar)`` as safetensors ``<name>/mean``, ``<name>/logvar``, atomically.

    Names: ``emotion/<emotion>``, ``emotion/<emotion>/<level>``, ``style/<speaker>``.
    """
    import torch

    tensors = {}
    for name, (mean, logvar) in presets.items():
        tensors[f"{name}/mean"] = torch.as_tensor(np.asarray(mean, np.float32)).contiguous()
        tensors[f"{name}/logvar"] = torch.as_tensor(np.asarray(logvar, np.float32)).contiguous()
    dims = {t.shape[-1] for t in tensors.values()}
    meta = {"format": PRESETS_FORMAT, "version": str(VERSION), "source": source, "emb_dim": str(dims.pop() if len(dims) == 1 else 0)}
    with atomic_path(path) as tmp:
        save_safetensors(tmp, tensors, meta)


def load_presets(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Read ``save_presets``' file: ``name -> (mean, logvar)``, each (E,)."""
    path = Path(path)
    if not path.is_file():
        raise TalkError(f"presets not found: {path}")
    tensors, meta = load_safetensors(path, STAGE, metadata=True)
    if meta.get("format") != PRESETS_FORMAT:
        raise TalkError(f"{path}: not a talk presets file")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, part = key.rpartition("/")
        out.setdefault(name, {})[part] = value
    broken = [n for n, d in out.items() if set(d) != {"mean", "logvar"}]
    if broken:
        raise TalkError(f"{path}: preset '{broken[0]}' lacks its mean or logvar; rebuild it with `talk {STAGE}`")
    return {n: (d["mean"], d["logvar"]) for n, d in out.items()}


def import_dice_presets(src: Path, dst: Path, trust_pickle: bool, logvar: float = math.log(1e-4)) -> Path:
    """DICE-Talk's released presets (one 256-d mean per emotion) -> our presets file.

    The release stores them with ``np.save`` of a dict / object array, i.e. a pickle: loading it
    runs whatever code the file carries. We refuse unless ``trust_pickle``. Accepted layouts: a
    dict ``{emotion: (E,) or (n, E)}``, an (8, E) array in MEAD's emotion order, or one (E,) mean
    in a file named ``<emotion>.npy``. The released means are points: ``logvar`` is the constant
    log-variance given to each. (They live in DICE-Talk's embedding space: use them with
    DICE-Talk's weights, not with a prior trained here.)
    """
    src = Path(src)
    if not src.is_file():
        raise TalkError(f"presets file not found: {src}")
    try:
        data = np.load(src, allow_pickle=False)
    except ValueError:
        if not trust_pickle:
            raise TalkError(
                f"{src} is a pickled .npy: loading it executes code stored in the file. Pass "
                f"--trust-pickle only if you trust where it came from (e.g. DICE-Talk's release)"
            ) from None
        data = np.load(src, allow_pickle=True)  # the user vouched for this file
    except OSError as e:
        raise TalkError(f"{src}: not a .npy file ({e})") from None
    if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
        data = data.item()
    table: dict[str, np.ndarray] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            name = str(k).lower()
            name = {"disgust": "disgusted", "surprise": "surprised", "fearful": "fear"}.get(name, name)
            if name not in EMOTIONS:
                raise TalkError(f"{src}: unknown emotion key {k!r} (known: {', '.join(EMOTIONS)})")
            table[name] = np.asarray(v, np.float32)
    elif isinstance(data, np.ndarray) and data.ndim == 2 and len(data) == len(EMOTIONS):
        table = {e: np.asarray(data[i], np.float32) for i, e in enumerate(EMOTIONS)}
    elif isinstance(data, np.ndarray) and data.ndim == 1 and src.stem.lower() in EMOTIONS:
        table = {src.stem.lower(): np.asarray(data, np.float32)}
    else:
        raise TalkError(f"{src}: expected a dict of emotion -> mean, an ({len(EMOTIONS)}, E) array, "
                        f"or one mean in <emotion>.npy; got {type(data).__name__} {getattr(data, 'shape', '')}")
    presets = {}
    for name, v in table.items():
        v = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v[None]
        if not np.isfinite(v).all():
            raise TalkError(f"{src}: non-finite values in the {name} preset")
        mean = v.mean(0)
        presets[f"emotion/{name}"] = (mean, np.full_like(mean, logvar))
    save_presets(Path(dst), presets, source=f"DICE-Talk release {src.name}")
    runtime.console.print(f"imported {len(presets)} preset(s) from {src} -> {dst}")
    return Path(dst)


@dataclasses.dataclass
class PriorBundle:
    """A trained prior: the modules (eval mode), presets and the config they were built from."""

    model: PriorModel
    presets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    config: dict
    path: Path

    @property
    def embedders(self) -> dict:
        return dict(self.model.embedders.items())

    @property
    def bank(self):
        return self.model.bank

    @property
    def template(self) -> torch.Tensor:
        """(68, 2) population landmark template (IOD units)."""
        return self.model.landmark_template

    def preset(self, emotion: str, level: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, logvar) of an emotion (and intensity level) preset."""
        if emotion not in EMOTIONS:
            raise TalkError(f"unknown emotion '{emotion}' (known: {', '.join(EMOTIONS)})")
        key = f"emotion/{emotion}" + (f"/{level}" if level else "")
        if key not in self.presets:
            have = sorted(k.split("/", 1)[1] for k in self.presets if k.startswith("emotion/"))
            raise TalkError(f"no preset for {emotion}" + (f" level {level}" if level else "")
                            + f" in {self.path} (have: {', '.join(have) or 'none'})")
        return self.presets[key]


def build_model(config: dict, path: Path | str = "config.json") -> PriorModel:
    """Rebuild the modules from a saved config.json (never from the code's defaults)."""
    from talk.models.prior import PriorModel

    prior = parse_saved(PriorConfig, config.get("prior"), path, "prior", STAGE)
    bank = parse_saved(EmotionBankConfig, config.get("bank"), path, "bank", STAGE)
    return PriorModel(prior, bank)


def save_prior(folder: Path, model: PriorModel, config: dict) -> None:
    """config.json + model.safetensors of a prior into ``folder`` (a stage's temporary folder)."""
    import json

    (folder / "config.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, **config}, indent=2) + "\n")
    save_safetensors(folder / "model.safetensors", model.state_dict(), {"format": FORMAT, "version": str(VERSION)})


def save_clip_embeddings(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``clip_embeddings.npz``: clip_id, speaker, emotion, level, split + [style_]mu / logvar."""
    np.savez(path, **arrays)


def load_prior(path: Path | str, device: str | torch.device = "cpu") -> PriorBundle:
    """Load a prior written by this stage (config.json + model.safetensors + presets.safetensors)."""
    path = Path(path)
    weights = path / "model.safetensors"
    config = read_config(path, FORMAT, VERSION, STAGE)
    model = build_model(config, path / "config.json")
    load_state(model, load_safetensors(weights, STAGE), weights, STAGE, path / "config.json")
    model.to(device).eval()
    presets = load_presets(path / "presets.safetensors") if (path / "presets.safetensors").is_file() else {}
    return PriorBundle(model=model, presets=presets, config=config, path=path)


class ClipEmbeddings:
    """Per-clip Gaussians of pretrain_prior's ``clip_embeddings.npz`` (emotion and optional style)."""

    def __init__(self, path: Path):
        path = Path(path)
        data = load_npz(path, STAGE, keys=("clip_id", "mu", "logvar"))
        n = len(data["clip_id"])
        shapes = [data[k].shape for k in ("mu", "logvar", "style_mu", "style_logvar") if k in data]
        if any(len(s) != 2 or s[0] != n for s in shapes) or ("style_mu" in data) != ("style_logvar" in data):
            raise TalkError(f"{path}: arrays of inconsistent shapes {shapes} for {n} clips; rebuild it with `talk {STAGE}`")
        self.path = path
        self.index = {str(c): i for i, c in enumerate(data["clip_id"])}
        self.mu, self.logvar = data["mu"].astype(np.float32), data["logvar"].astype(np.float32)
        self.style_mu = data.get("style_mu")
        self.style_logvar = data.get("style_logvar")

    @property
    def emotion_dim(self) -> int:
        return self.mu.shape[1]

    @property
    def style_dim(self) -> int:
        return 0 if self.style_mu is None else self.style_mu.shape[1]

    def rows(self, clip_ids) -> np.ndarray:
        missing = [c for c in clip_ids if c not in self.index]
        if missing:
            raise TalkError(f"clip {missing[0]} has no embedding in {self.path}: re-run talk pretrain-prior")
        return np.array([self.index[c] for c in clip_ids])

    def draw(self, clip_ids, kind: str, generator, device, sample: bool = True):
        """z (B, E) for the clips: the mean, or a draw mu + σ ε with the step's generator."""
        import torch

        mu, logvar = (self.mu, self.logvar) if kind == "emotion" else (self.style_mu, self.style_logvar)
        if mu is None:
            raise TalkError(f"{self.path} has no {kind} embeddings (train the prior with the {kind} head)")
        r = self.rows(list(clip_ids))
        m = torch.from_numpy(mu[r]).to(device)
        if not sample:
            return m
        std = torch.from_numpy(logvar[r]).to(device).mul(0.5).exp()
        return m + std * torch.randn(m.shape, generator=generator, device=device)
