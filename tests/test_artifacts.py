"""Damaged artefacts (talk/artifacts/files.py): every truncated, zeroed or garbled file of every
artefact kind is one TalkError naming the file (and through the CLI: exit 2, one line, no
traceback); the modes and resolved configs of what the training stages write."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from denoiser_fixture import make_pipeline_inputs

from talk.core.errors import TalkError


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Upstream inputs, then train_diffusion and finetune_disc through the CLI (a few steps each)."""
    from typer.testing import CliRunner

    from talk.artifacts.prior import save_presets
    from talk.cli.main import app

    root = tmp_path_factory.mktemp("artifacts")
    params = make_pipeline_inputs(root)
    save_presets(root / "prior" / "presets.safetensors", {"emotion/happy": (np.zeros(8), np.zeros(8))}, "test")
    runner = CliRunner()
    for cmd in ("train-diffusion", "finetune-disc"):
        result = runner.invoke(app, [cmd, "--params", str(params)])
        assert result.exit_code == 0, result.output
    return root, params


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    else:  # garbled: the same length of random bytes
        path.write_bytes(np.random.default_rng(len(data)).integers(0, 256, len(data), dtype=np.uint8).tobytes())


def _load_vae(folder):
    from talk.artifacts.vae import load_vae

    load_vae(folder)


def _load_prior(folder):
    from talk.artifacts.prior import load_prior

    load_prior(folder)


def _load_embeddings(folder):
    from talk.artifacts.prior import ClipEmbeddings

    ClipEmbeddings(folder / "clip_embeddings.npz")


def _load_denoiser(folder):
    from talk.artifacts.denoiser import load_denoiser

    load_denoiser(folder)


def _load_discriminator(folder):
    from talk.artifacts.denoiser import load_discriminator

    load_discriminator(folder)


def _open_cache(folder):
    from talk.data.latent_cache import LatentCache

    LatentCache(folder)


def _resume(folder: Path, config: dict):
    """Resume train_diffusion's run in ``folder`` as the stage does (``config``: its saved run config)."""
    from talk.artifacts.denoiser import load_denoiser
    from talk.training.trainer import LoopConfig, Trainer

    loop = LoopConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["loop"].items()})
    model = load_denoiser(folder.parent.parent / "diffusion").train()
    if hasattr(model.emotion_bank, "readout"):  # frozen in training (talk.artifacts.denoiser.build_denoiser)
        model.emotion_bank.readout.requires_grad_(False)
    run = {k: v for k, v in config.items() if k not in ("name", "seed", "world", "loop")}
    return Trainer(loop, model, folder, run, 0, "cpu", name="diffusion", stage="train-diffusion")


KINDS = {  # file (relative to the fixture root) -> (folder given to the loader, loader)
    "vae/config.json": ("vae", _load_vae),
    "vae/diffusion_pytorch_model.safetensors": ("vae", _load_vae),
    "prior/config.json": ("prior", _load_prior),
    "prior/model.safetensors": ("prior", _load_prior),
    "prior/presets.safetensors": ("prior", _load_prior),
    "prior/clip_embeddings.npz": ("prior", _load_embeddings),
    "diffusion/config.json": ("diffusion", _load_denoiser),
    "diffusion/model.safetensors": ("diffusion", _load_denoiser),
    "diffusion/scheduler_config.json": ("diffusion", _load_denoiser),
    "finetune_disc/discriminator.safetensors": ("finetune_disc", _load_discriminator),
    "latents.lmdb/data.mdb": ("latents.lmdb", _open_cache),
}
CHECKPOINT_FILES = ("state.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors")


@pytest.mark.parametrize("how", ["truncated", "zeroed", "garbled"])
@pytest.mark.parametrize("name", list(KINDS))
def test_damaged_artefact_is_one_error_naming_the_file(pipeline, tmp_path, name, how):
    from talk.data import latent_cache as lc

    root, _ = pipeline
    folder, loader = KINDS[name]
    copy = tmp_path / folder
    shutil.copytree(root / folder, copy)
    loader(copy)  # sound: loads
    lc.close_env(copy)
    _damage(tmp_path / name, how)
    with pytest.raises(TalkError) as e:
        loader(copy)
    assert str(tmp_path / name) in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("how", ["truncated", "zeroed", "garbled"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_checkpoint_is_one_error_naming_the_file(pipeline, tmp_path, name, how):
    root, _ = pipeline
    shutil.copytree(root / "diffusion", tmp_path / "diffusion")
    ckpts = tmp_path / "diffusion_train" / "checkpoints"
    shutil.copytree(root / "diffusion_train" / "checkpoints", ckpts)
    last = sorted(ckpts.glob("*/step-*"))[-1]
    config = json.loads((last / "state.json").read_text())["config"]
    assert _resume(ckpts, config).resumed_from == last  # sound: resumes
    _damage(last / name, how)
    with pytest.raises(TalkError) as e:
        _resume(ckpts, config)
    assert str(last / name) in str(e.value) and "re-run `talk train-diffusion`" in str(e.value), str(e.value)


CLI_CASES = {  # damaged file -> the command that reads it first
    "vae/diffusion_pytorch_model.safetensors": "cache-latents",
    "prior/model.safetensors": "train-diffusion",
    "prior/presets.safetensors": "train-diffusion",
    "prior/clip_embeddings.npz": "train-diffusion",
    "latents.lmdb/data.mdb": "train-diffusion",
    "diffusion/model.safetensors": "finetune-disc",
    "diffusion/config.json": "finetune-disc",
    "diffusion_train/checkpoints": "train-diffusion",
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_damaged_artefact_through_the_cli_is_one_line(pipeline, tmp_path, runner, name):
    from talk.cli.main import app

    root, params = pipeline
    work = tmp_path / "root"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("live"))
    text = Path(params).read_text().replace(str(root), str(work))
    (work / "params.yaml").write_text(text)
    target = work / name
    if target.is_dir():  # the newest checkpoint's weights
        target = sorted(target.glob("*/step-*"))[-1] / "model.safetensors"
    _damage(target, "truncated")
    extra = ["--set", "train_diffusion.loop.steps=4"] if "checkpoints" in name else []
    result = runner.invoke(app, [CLI_CASES[name], "--params", str(work / "params.yaml"), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and target.name in last and "talk " in last, result.output


def test_cache_latents_rebuilds_a_damaged_cache(tmp_path):
    from latents_fixture import make_synthetic_cache

    from talk.data import latent_cache as lc

    db = tmp_path / "db"
    make_synthetic_cache(db, {"c0": 3}, shape=(4, 8, 8), identity="x")
    _damage(db / "data.mdb", "zeroed")
    with pytest.raises(TalkError, match="data.mdb: not a readable LMDB"):
        lc.LatentCache(db)
    lc.open_for_update(db, "x", (4, 8, 8))  # the stage's path: a damaged cache is removed and rebuilt
    assert not (db / "data.mdb").exists()
    assert lc.verify(db, {"c0": 3}) == [f"no latent cache at {db}"]


# --------------------------------------------------------------------------------------------
# What the training stages write: file modes and resolved configs


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_every_file_the_training_stages_write_has_the_umask_mode(pipeline):
    root, _ = pipeline
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    for folder in ("diffusion", "diffusion_train", "finetune_disc", "finetune_disc_train"):
        modes = _modes(root / folder)
        assert any(k.endswith(".safetensors") for k in modes), folder
        bad = {k: oct(v) for k, v in modes.items() if v != want}
        assert not bad, (folder, bad)


def test_denoiser_folders_carry_their_settings_and_objective(pipeline):
    from talk.artifacts.denoiser import read_config, read_objective
    from talk.inference import settings
    from talk.training.diffusion import ObjectiveConfig

    root, _ = pipeline
    for folder in ("diffusion", "finetune_disc"):
        s = settings.read(root / folder)
        assert s.sampling.steps == 2 and s.image_size == 16 and "whisper" in s.audio and "detector" in s.face
        assert not any(isinstance(v, str) and v.startswith("data/") for v in s.audio.values())  # no path fields
        assert read_objective(root / folder, ObjectiveConfig) == ObjectiveConfig()
    assert (root / "finetune_disc" / "inference.json").read_bytes() == (root / "diffusion" / "inference.json").read_bytes()
    config = read_config(root / "diffusion")
    del config["objective"]
    (root / "old").mkdir()
    (root / "old" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TalkError, match="no saved training objective"):
        read_objective(root / "old", ObjectiveConfig)


@pytest.mark.parametrize("folder, sections", [
    ("diffusion", ["base", "paths", "model", "crop_align", "audio_features", "train_diffusion"]),
    ("finetune_disc", ["base", "paths", "model", "finetune_disc"]),
])
def test_resolved_params_list_every_section_read(pipeline, folder, sections):
    root, _ = pipeline
    assert list(yaml.safe_load((root / folder / "params.yaml").read_text())) == sections
