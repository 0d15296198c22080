"""Stage `evaluate`: score rendered test clips against the real ones (docs/method.md §3, MEAD protocol).

Every labelled clip of ``evaluate.split`` is rendered from a reference frame, its own audio and its
emotion label by a ``render_fn(ref_frame, audio, emotion, level) -> (T, H, W, 3) uint8`` and
scored against the real clip, on three rows: ``model`` (the renderer under test), ``real`` (the
real clips: the ceiling) and ``floor`` (the reference frame repeated). Face sharpness and colour
are scored against the reference's round trip through ``paths.vae`` when that artefact exists.
With ``evaluate.long_render`` > 0, one test identity's speech is also rendered in one go and its
identity / sharpness / colour drift scored (model row only). A model that does not beat
the floor on lip sync or emotion accuracy is reported as a finding (talk/evaluation/).

Inputs: ``paths.crops`` (crop_align), the trained artefacts the model row loads (``render``
section), ``paths.prior``/embeddings.png when present, ``paths.sync`` (train_sync's lip-sync
expert, for Sync-C / Sync-D (talk expert), with ``paths.audio_features``) when present. Outputs (``paths.evaluate``): metrics.json
(per row), notes.json, per_clip.csv, plots/ (confusion matrices and the lip-sync lag curve, CSV +
PNG; the long render's identity curve, CSV), report.html (self-contained), params.yaml.
"""

from __future__ import annotations

from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.runtime import log
from talk.data.crops import read_manifest
from talk.evaluation import report, results, scoring
from talk.evaluation.clips import RenderFn, select
from talk.evaluation.config import Config

__all__ = ["Config", "run"]


def sync_expert(params, cfg: Config):
    """train_sync's expert as the Sync-C / Sync-D (talk expert) metric; None (noted) without one."""
    from talk.artifacts import sync

    if not sync.exists(params.paths.sync):
        log.info("evaluate: no lip-sync expert in %s (run `talk train-sync`); Sync-C / Sync-D (talk expert) skipped",
                 params.paths.sync)
        return None
    from talk.evaluation.metrics.syncnet import SyncExpertMetric

    return SyncExpertMetric(params.paths.sync, params.paths.audio_features, cfg.sync_max_offset)


def run(params, render_fn: RenderFn | None = None) -> dict:
    """Render and score every labelled clip of ``evaluate.split``; returns the per-row metrics.
    ``render_fn`` is the model row (default: the trained pipeline, talk.inference.pipeline)."""
    cfg: Config = params.evaluate
    crops = params.paths.crops
    df = read_manifest(crops)
    chosen = select(df, cfg.split, cfg.max_clips)
    if len(chosen) == 0:
        raise TalkError(f"no labelled '{cfg.split}' clips in {crops / 'manifest.csv'}")
    if 0 < cfg.long_render < 1:
        raise TalkError(f"evaluate.long_render: {cfg.long_render:g} s is too short for a first and a last second (0 = off, or >= 1)")
    if render_fn is None:
        from talk.inference.pipeline import evaluation_renderer  # torch and the trained artefacts: only when needed

        render_fn = evaluation_renderer(params)
    prior_plot = params.paths.prior / "embeddings.png"
    if not prior_plot.is_file():
        log.info("evaluate: no prior embedding plot at %s; the report leaves it out", prior_plot)
        prior_plot = None

    vae_strip = params.paths.vae / "roundtrip.png"
    vae_strip = vae_strip if vae_strip.is_file() else None
    scored = scoring.score_clips(cfg, crops, df, chosen, render_fn, params.paths.weights, params.paths.vae,
                                 sync_expert(params, cfg))
    rows = results.aggregate(scored.clips, scored.scores, scored.extras, scored.long)
    notes = results.notes(cfg, df, scored, rows)
    for f in notes["findings"]:
        log.warning("evaluate finding: %s", f)
    with atomic_dir(params.paths.evaluate) as tmp:
        results.write(tmp, cfg, scored, rows, notes, prior_plot, vae_strip)
        params.write_resolved(tmp / "params.yaml", ["base", "paths", "model", "evaluate", "render"])
    report.print_summary(rows, results.METRICS)
    return rows
