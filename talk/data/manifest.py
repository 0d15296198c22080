"""The discover manifest contract (docs/pipeline.md "Manifest"): discover writes it
(talk/data/discovery.py), crop_align and anything else that reads the found clips read it here.

``paths.manifest`` has one row per usable clip (``COLUMNS``): ``clip_id`` (a safe folder name,
unique), labels (``speaker``, ``emotion``, ``level``; empty / 0 when unlabelled), where its
media are (``video_path``, ``audio_path`` = ``video_path`` when the video carries its own audio,
``gt_path`` to a ground-truth table or ''), what probing found (``duration`` s, ``fps``, ``width``,
``height`` px, ``has_audio``), its ``split`` (speaker-disjoint) and ``subset`` (the root's folder
name). ``paths.rejects`` has one row per rejected file (``REJECT_COLUMNS``) with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from rich.table import Table

from talk.core.errors import TalkError
from talk.core.fs import atomic_path

COLUMNS = (
    "clip_id", "speaker", "emotion", "level", "video_path", "audio_path", "duration", "fps",
    "width", "height", "has_audio", "split", "subset", "gt_path",
)  # docs/pipeline.md "Manifest"
REJECT_COLUMNS = ("subset", "path", "reason")
SPLITS = ("train", "val", "test")  # values of the split column
REQUIRED = ("clip_id", "video_path", "audio_path")  # columns a reader cannot do without (a hand-made manifest may hold only these)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write the manifest or the rejects table (CSV), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest at ``path``, checked: the ``REQUIRED`` columns, at least one clip, clip ids that
    are unique safe folder names and cannot collide with the ``<clip_id>_s<k>`` pieces crop_align
    names a split clip's parts. Cells are strings where empty ('' = none)."""
    if not Path(path).is_file():
        raise TalkError(f"manifest not found: {path} (run `talk discover` first)")
    try:
        df = pd.read_csv(path, dtype={"clip_id": str, "video_path": str, "audio_path": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TalkError(f"{path}: not a readable CSV manifest ({type(e).__name__})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TalkError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise TalkError(f"{path}: the manifest has no clips")
    bad = [c for c in df["clip_id"] if not SAFE_ID.match(c)]
    if bad:
        raise TalkError(f"{path}: clip_id '{bad[0]}' is not a safe folder name (letters, digits, _ . -)")
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise TalkError(f"{path}: clip_id '{dup.iloc[0]}' appears more than once")
    ids = set(df["clip_id"])
    for c in ids:
        m = re.fullmatch(r"(.+)_s\d+", c)
        if m and m[1] in ids:  # pieces of a split clip are named <clip_id>_s<k>
            raise TalkError(f"{path}: clip_id '{c}' could collide with a piece of clip '{m[1]}': rename it")
    return df


def summary(manifest: pd.DataFrame, rejects: pd.DataFrame) -> Table:
    """Clips, speakers, minutes and labelled clips per subset and split; rejects per subset."""
    table = Table(title="discover: clips per subset and split")
    for col, justify in (("subset", "left"), ("split", "left"), ("clips", "right"), ("speakers", "right"),
                         ("minutes", "right"), ("labelled", "right"), ("rejected", "right")):
        table.add_column(col, justify=justify)
    subsets = list(dict.fromkeys(list(manifest["subset"]) + list(rejects["subset"])))
    for subset in subsets:
        part = manifest[manifest["subset"] == subset]
        n_rej = int((rejects["subset"] == subset).sum())
        for split in SPLITS:
            s = part[part["split"] == split]
            if len(s):
                table.add_row(subset, split, str(len(s)), str(s["speaker"].nunique()),
                              f"{s['duration'].sum() / 60:.1f}", str(int((s["emotion"] != "").sum())), "")
        table.add_row(subset, "[dim]all[/]", str(len(part)), str(part["speaker"].nunique()),
                      f"{part['duration'].sum() / 60:.1f}", str(int((part["emotion"] != "").sum())),
                      f"[red]{n_rej}[/]" if n_rej else "0", end_section=True)
    return table
