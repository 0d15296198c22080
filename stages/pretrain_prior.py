"""Stage `pretrain_prior`: the emotion / style prior and the Emotion Bank, before diffusion training.

DICE-Talk §3.1-3.2 and SVP §3.2 train the prior first, then the denoiser. This stage trains one
probabilistic cross-modal embedder per head (``model.prior.heads``) on random windows of the
train split of ``paths.crops`` / ``paths.audio_features`` with the shared training loop,
early-stops on the val split, and pretrains the Emotion Bank (talk/training/prior.py).

Writes into ``paths.prior``:
- ``config.json`` + ``model.safetensors``: the architecture and every weight (``load_prior``);
- ``presets.safetensors``: one Gaussian per emotion and per (emotion, level) — moment-matched
  mixtures of the train clips' Gaussians — and (style head) one per train speaker;
- ``clip_embeddings.npz``: mu / logvar of every clip in the manifest (all splits, both modalities);
- ``metrics.json``: linear-probe emotion accuracy on unseen speakers (audio / video / both),
  identity leakage (speaker probe on seen speakers vs chance), codebook usage;
- ``embeddings.png`` (PCA of the test embeddings), ``curves.tsv``, ``params.yaml`` and
  ``checkpoints/`` (kept between runs: re-running resumes, a stopped run stays stopped).

``talk pretrain-prior --import-presets FILE.npy --trust-pickle`` converts DICE-Talk's released
(pickled) presets instead.
"""

from __future__ import annotations

from pathlib import Path

from talk.artifacts.prior import import_dice_presets
from talk.core import runtime
from talk.training.prior import (
    FILES,  # noqa: F401  (the files this stage writes, for the tests and dvc.yaml)
    run_stage,
    summary,
)
from talk.training.prior import PretrainPriorConfig as Config

SECTIONS = ("base", "paths", "model", "pretrain_prior")  # every section read


def run(params, import_presets: Path | None = None, trust_pickle: bool = False, presets_out: Path | None = None) -> Path:
    """Train the prior and the bank; write ``paths.prior`` (or import DICE-Talk presets)."""
    out = Path(params.paths.prior)
    if import_presets is not None:
        return import_dice_presets(import_presets, presets_out or out.with_name(out.name + "_imported") / "presets.safetensors",
                                   trust_pickle)
    cfg: Config = params.pretrain_prior
    metrics = run_stage(params, cfg, lambda tmp: params.write_resolved(tmp / "params.yaml", SECTIONS))
    runtime.console.print(summary(metrics))
    return out
