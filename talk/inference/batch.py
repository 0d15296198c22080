"""`talk render --batch jobs.csv`: one render per CSV row, every row checked before the first renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from talk.core.errors import TalkError
from talk.core.fs import check_output
from talk.core.runtime import console
from talk.inference.emotion import check_emotion, parse_blend

BATCH_COLUMNS = ("image", "audio", "emotion", "intensity", "out")  # required columns of --batch CSVs


BATCH_OPTIONAL = ("blend", "emotion_from", "style_from", "seed", "steps", "guidance_ref", "guidance_audio",
                  "guidance_emotion", "guidance_style", "paste_back", "crop", "level")

if TYPE_CHECKING:
    from talk.inference.pipeline import TalkPipeline


def read_batch(path: Path) -> list[dict]:
    """Rows of a --batch CSV (image, audio, emotion, intensity, out [, optional columns]), checked.

    Relative paths are taken from the CSV's folder.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TalkError(f"batch file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TalkError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in BATCH_COLUMNS if c not in df.columns]
    if missing:
        raise TalkError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(BATCH_COLUMNS)})")
    unknown = [c for c in df.columns if c not in BATCH_COLUMNS + BATCH_OPTIONAL]
    if unknown:
        raise TalkError(f"{path}: unknown column(s) {', '.join(unknown)} (optional: {', '.join(BATCH_OPTIONAL)})")
    if df.empty:
        raise TalkError(f"{path}: no jobs")
    base = path.parent
    jobs, outs = [], set()
    for i, row in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path}:{i}"
        job: dict[str, Any] = {}
        for col in ("image", "audio", "out", "emotion_from", "style_from"):
            v = row.get(col, "").strip()
            if v:
                p = Path(v).expanduser()
                job[col] = p if p.is_absolute() else base / p
        for col in ("image", "audio", "out"):
            if col not in job:
                raise TalkError(f"{where}: empty {col}")
        for col in ("image", "audio", "emotion_from"):
            if col in job and not job[col].is_file():
                raise TalkError(f"{where}: {col} not found: {job[col]}")
        check_output(job["out"], (".mp4",), f"{where}: out")  # a folder, a wrong suffix, an unwritable place
        if job["out"] in outs:
            raise TalkError(f"{where}: output {job['out']} is written by an earlier row")
        outs.add(job["out"])
        try:
            chosen = [c for c in ("blend", "emotion_from") if str(row.get(c, "")).strip()]
            if str(row.get("emotion", "")).strip() not in ("", "neutral"):
                chosen.insert(0, "emotion")
            if len(chosen) > 1:
                raise TalkError(f"{' and '.join(chosen)} each set the emotion: fill one of them")
            if row.get("blend", "").strip():
                job["blend"] = parse_blend(row["blend"])
            elif "emotion_from" not in job:
                job["emotion"] = check_emotion(row["emotion"] or "neutral")
            if row.get("emotion", "").strip() and "emotion" not in job:
                job["emotion"] = check_emotion(row["emotion"])
            if row["intensity"].strip():
                job["intensity"] = float(row["intensity"])
                if not 0 <= job["intensity"] <= 1:
                    raise TalkError(f"intensity {job['intensity']} is not in [0, 1]")
            for col, cast in (("seed", int), ("steps", int), ("level", int), ("guidance_ref", float),
                              ("guidance_audio", float), ("guidance_emotion", float), ("guidance_style", float)):
                if row.get(col, "").strip():
                    job[col] = cast(row[col])
            for col in ("paste_back", "crop"):
                v = row.get(col, "").strip().lower()
                if v:
                    if v not in ("true", "false", "1", "0", "yes", "no"):
                        raise TalkError(f"{col} must be true or false, got '{row[col]}'")
                    job[col] = v in ("true", "1", "yes")
        except TalkError as e:
            raise TalkError(f"{where}: {e}") from None
        except ValueError as e:
            raise TalkError(f"{where}: {e}") from None
        jobs.append(job)
    return jobs


def render_batch(pipe: TalkPipeline, jobs: list[dict], **common) -> list[dict]:
    """Render every job (``read_batch``) to its mp4; ``common`` settings apply to all rows."""
    results = []
    for i, job in enumerate(jobs, 1):
        job = dict(job)
        image, audio, out = job.pop("image"), job.pop("audio"), job.pop("out")
        console.print(f"[bold]job {i}/{len(jobs)}[/]: {out}", highlight=False)
        results.append(pipe.render_to_file(out, image, audio, **{**common, **job}))
    return results
