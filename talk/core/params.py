"""params.yaml -> typed, frozen configs.

Every section of params.yaml parses into a frozen dataclass. A stage's section class is the
``Config`` dataclass of ``stages/<section>.py``; ``base``, ``paths`` and ``model`` live here.
Unknown or misspelt keys are errors naming the key, the section and the closest valid key;
types and ranges are checked. ``--set section.key=value`` overrides are applied before parsing.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from talk.core.errors import TalkError
from talk.models.denoiser_config import ConditioningConfig, DenoiserConfig, DiffusionConfig, DiscriminatorConfig
from talk.models.errors import ConfigError
from talk.models.prior_config import EmotionBankConfig, PriorConfig
from talk.models.vae_config import VaeConfig

# Section name -> dataclass, or the module that defines it as ``Config`` (imported lazily so that
# `talk --help` stays fast). The order is the pipeline's order; it is also the order of params.yaml.
SECTIONS: dict[str, Any] = {}


def register(name: str, target: Any) -> None:
    """Declare a params.yaml section: a dataclass or a module path whose ``Config`` it is."""
    SECTIONS[name] = target


def rng(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict:
    """Field metadata for an inclusive numeric range check."""
    return {"range": (lo, hi), **kw}


def one_of(*choices: str) -> dict:
    """Field metadata for a closed set of string values."""
    return {"choices": tuple(choices)}


def section_class(name: str) -> type:
    target = SECTIONS[name]
    if isinstance(target, str):
        target = importlib.import_module(target).Config
        SECTIONS[name] = target
    return target


# --------------------------------------------------------------------------------------------
# Parsing


def _closest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert YAML shapes (list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except TalkError as e:
                errors.append(str(e))
        raise TalkError(errors[0] if errors else f"{where}: null is not allowed")
    if origin is typing.Literal:
        if value not in args:
            raise TalkError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TalkError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise TalkError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TalkError(f"{where}: expected a mapping, got {value!r}")
        return types.MappingProxyType(dict(value))
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise TalkError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TalkError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TalkError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TalkError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise TalkError(f"{where}: expected a path, got {value!r}")
        return Path(value).expanduser()
    raise TypeError(f"{where}: unsupported annotation {_type_name(tp)}")


def _check(value: Any, meta: typing.Mapping, where: str) -> None:
    if value is None:
        return
    lo, hi = meta.get("range", (None, None))
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)):
            continue
        if lo is not None and v < lo:
            raise TalkError(f"{where}: {v} is below the minimum {lo}")
        if hi is not None and v > hi:
            raise TalkError(f"{where}: {v} is above the maximum {hi}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise TalkError(f"{where}: {value!r} is not one of {', '.join(choices)}{_closest(str(value), choices)}")


def parse(cls: type, data: Any, where: str) -> Any:
    """Build the frozen dataclass ``cls`` from a mapping; ``where`` names it in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TalkError(f"{where}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise TalkError(f"unknown key '{key}' in section '{where}'{_closest(key, fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        raw = data[name]
        if dataclasses.is_dataclass(hints[name]) and isinstance(raw, dict) and f.default_factory is not dataclasses.MISSING:
            raw = {**to_plain(f.default_factory()), **raw}  # a nested block's missing keys: the field's default, not the class's
        value = _coerce(raw, hints[name], f"{where}.{name}")
        _check(value, f.metadata, f"{where}.{name}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a field without default that the file leaves out
        raise TalkError(f"section '{where}': {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:  # a models/ config: its message names the key
            raise TalkError(str(e)) from None
    return obj


def to_plain(obj: Any) -> Any:
    """Dataclasses / tuples / Paths -> YAML-friendly builtins (for the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, typing.Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------
# Overrides and loading


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw mapping, in place."""
    if "=" not in assignment:
        raise TalkError(f"--set expects section.key=value, got '{assignment}'")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise TalkError(f"--set expects section.key=value, got '{assignment}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise TalkError(f"--set {dotted}: '{k}' is not a section")
        node = child
    node[keys[-1]] = value


@dataclasses.dataclass(frozen=True)
class Params:
    """All sections of a params file, parsed. ``params.crop_align`` etc."""

    source: Path  # the params file these came from
    sections: typing.Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__["sections"]
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def to_dict(self, names: typing.Iterable[str] | None = None) -> dict:
        names = list(self.sections) if names is None else list(names)
        return {n: to_plain(self.sections[n]) for n in names}

    def write_resolved(self, path: Path, names: typing.Iterable[str] | None = None) -> Path:
        """Write the resolved config (YAML) beside a stage's outputs, atomically."""
        from talk.core.fs import atomic_write_text

        text = f"# resolved from {self.source}\n" + yaml.safe_dump(self.to_dict(names), sort_keys=False)
        atomic_write_text(Path(path), text)
        return Path(path)


def load(path: Path | str = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Read a params file, apply ``--set`` overrides, parse every section."""
    path = Path(path)
    if not path.is_file():
        raise TalkError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise TalkError(f"{path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise TalkError(f"{path}: expected sections at the top level")
    for assignment in overrides:
        apply_override(data, assignment)
    for name in data:
        if name not in SECTIONS:
            raise TalkError(f"unknown section '{name}' in {path}{_closest(name, SECTIONS)}")
    parsed = {name: parse(section_class(name), data.get(name), name) for name in SECTIONS}
    return Params(source=path, sections=types.MappingProxyType(parsed))


# --------------------------------------------------------------------------------------------
# The shared sections. Stage sections are the ``Config`` classes of their modules.


@dataclasses.dataclass(frozen=True)
class Base:
    seed: int = dataclasses.field(default=0, metadata=rng(0))  # global seed; per-sample seeds derive from it
    device: str = dataclasses.field(default="auto", metadata=one_of("auto", "cpu", "cuda", "mps"))  # auto: CUDA if present
    threads: int = dataclasses.field(default=0, metadata=rng(0))  # torch intra-op threads; 0 = all cores
    log_level: str = dataclasses.field(default="info", metadata=one_of("debug", "info", "warning", "error"))
    deterministic: bool = True  # deterministic torch kernels: the same run twice gives the same bits (docs/reliability.md)


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every input and output path of the pipeline, once (relative paths: from the repo root).

    A stage reads its inputs and writes its outputs here; dvc.yaml names them as ``${paths.x}``.
    """

    sources: Path = Path("data/sources")  # real portraits, speech and talking videos carried in the repo (sample_data input)
    raw: Path = Path("data/raw")  # dataset root: sample_data writes <raw>/mead and <raw>/wild; discover reads discover.roots under it
    manifest: Path = Path("data/manifest.csv")  # discover: one row per usable clip (docs/pipeline.md "Manifest")
    rejects: Path = Path("data/rejects.csv")  # discover: one row per rejected file, with the reason
    crops: Path = Path("data/crops")  # crop_align: one folder per clip + manifest.csv, rejects.csv (docs/pipeline.md "Crops")
    audio_features: Path = Path("data/audio_features")  # audio_features: <clip_id>.npy Whisper states + meta.json
    vae: Path = Path("artifacts/vae")  # fit_vae: the image autoencoder (diffusers AutoencoderKL folder)
    latents: Path = Path("data/latents.lmdb")  # cache_latents: LMDB of VAE posteriors per clip
    prior: Path = Path("artifacts/prior")  # pretrain_prior: emotion / style embedders, Emotion Bank, presets, clip embeddings
    diffusion: Path = Path("artifacts/diffusion")  # train_diffusion: the denoiser
    diffusion_train: Path = Path("artifacts/diffusion_train")  # train_diffusion: checkpoints/ (kept: re-running resumes), live/, metrics.json
    finetune_disc: Path = Path("artifacts/finetune_disc")  # finetune_disc: the fine-tuned denoiser + its emotion discriminator
    finetune_disc_train: Path = Path("artifacts/finetune_disc_train")  # finetune_disc: checkpoints/, live/, metrics.json
    evaluate: Path = Path("artifacts/evaluate")  # evaluate: metrics.json, per_clip.csv, plots/, report.html
    render: Path = Path("artifacts/render")  # render: the demo videos and contact sheet
    sync: Path = Path("artifacts/sync")  # train_sync: the lip-sync expert (config.json, model.safetensors), metrics.json, checkpoints/
    weights: Path = Path("weights")  # locally supplied pretrained weights (full profile)
    cache: Path = Path("~/.cache/talk").expanduser()  # converted checkpoints, built once per user


@dataclasses.dataclass(frozen=True)
class Model:
    """Architecture and data shapes shared by training, evaluation and rendering.

    Saved with every checkpoint; sub-models add their own nested config fields here.
    """

    image_size: int = dataclasses.field(default=128, metadata=rng(16))  # px, side of the aligned square crop the models see
    motion_frames: int = dataclasses.field(default=2, metadata=rng(0))  # M: previous frames given as motion context
    target_frames: int = dataclasses.field(default=1, metadata=rng(1))  # F: frames denoised together (1 = frame backbone)
    audio_window: int = dataclasses.field(default=10, metadata=rng(2))  # k: Whisper frames (50 Hz) centred on each video frame
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)  # emotion / style embedder (DICE-Talk §3.1, SVP §3.2; models/prior.py)
    bank: EmotionBankConfig = dataclasses.field(default_factory=EmotionBankConfig)  # Emotion Bank (DICE-Talk §3.2; models/emotion_bank.py)
    vae: VaeConfig = dataclasses.field(default_factory=VaeConfig)  # image autoencoder: own (trained by fit_vae) or a local diffusers folder (LDM §3; models/vae.py)
    denoiser: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)  # UNet backbone: frame (UNet2DConditionModel) | clip (SVD's spatio-temporal UNet) (models/denoiser.py)
    conditioning: ConditioningConfig = dataclasses.field(default_factory=ConditioningConfig)  # audio / emotion / style tokens, decoupled cross-attention (models/conditioning.py)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)  # noise schedule and prediction target (models/diffusion.py)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)  # emotion classifier on denoiser features (models/discriminator.py)


register("base", Base)
register("paths", Paths)
register("model", Model)
register("sample_data", "talk.stages.sample_data")
register("discover", "talk.stages.discover")
register("crop_align", "talk.stages.crop_align")
register("audio_features", "talk.stages.audio_features")
register("fit_vae", "talk.stages.fit_vae")
register("cache_latents", "talk.stages.cache_latents")
register("pretrain_prior", "talk.stages.pretrain_prior")
register("train_diffusion", "talk.stages.train_diffusion")
register("finetune_disc", "talk.stages.finetune_disc")
register("train_sync", "talk.stages.train_sync")
register("evaluate", "talk.stages.evaluate")
register("render", "talk.stages.render")
register("serve", "talk.web.config")  # `talk serve`, the local web page (not a DVC stage)
