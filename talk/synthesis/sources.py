"""The sample sources carried in the repo (``paths.sources``): real portraits, speech and talking
videos listed with their origin and licence in ``<sources>/MANIFEST.tsv`` (see data/sources/build.py).

``read_sources`` lists them for the sample-clip plan (talk/synthesis/clips.py); ``copy_wild`` and
``write_attribution`` put the in-the-wild videos and the rows of the files used beside the
sample dataset (docs/method.md §1 "Data"). A wild video whose manifest row names a speaker (a
person who is also a portrait) gets that speaker in ``labels.csv`` beside the videos, which
discover reads (``discover.labels_csv``), so the speaker-disjoint split keeps the person on one
side. Rows of kind ``heldout_portrait`` (``<sources>/heldout/``) are read by no stage.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

from talk.core.errors import TalkError

PORTRAIT_KINDS = ("portrait", "speech")  # the sources of the generated MEAD-like clips
WILD_KINDS = ("wild_video", "wild_audio")  # the real talking videos, copied as they are
HELDOUT_KIND = "heldout_portrait"  # real portraits no stage reads (benchmarks/vae_quality.py's unseen faces)
WILD_LABELS = "labels.csv"  # written beside the wild videos: path, speaker (discover.labels_csv's default name)


@dataclasses.dataclass(frozen=True)
class Source:
    file: Path
    kind: str  # portrait | speech | wild_video | wild_audio | heldout_portrait
    speaker: str
    gender: str  # M | F | '' (unknown)
    emotion: str  # acted emotion of a speech file, '' when unlabelled


def read_sources(root: Path) -> list[Source]:
    """Rows of ``<root>/MANIFEST.tsv`` whose files exist; TalkError naming what is missing."""
    manifest = Path(root) / "MANIFEST.tsv"
    if not manifest.is_file():
        raise TalkError(f"{manifest} not found: paths.sources must hold the sample sources (see data/sources/build.py)")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing_cols = {"file", "kind"} - set(reader.fieldnames or ())
        if missing_cols:
            raise TalkError(f"{manifest}: missing column(s) {', '.join(sorted(missing_cols))}")
        rows = list(reader)
    out = []
    for r in rows:
        path = Path(root) / r["file"]
        if not path.is_file():
            raise TalkError(f"{path} is listed in {manifest} but missing")
        out.append(Source(path, r["kind"], r.get("speaker", "") or "", r.get("gender", "") or "", r.get("emotion", "") or ""))
    return out


def copy_wild(sources: list[Source], out: Path) -> int:
    """Copy the in-the-wild videos and their same-stem audio files into ``out`` (flat), with
    ``labels.csv`` for the videos whose row names a speaker; returns the number of videos."""
    n, labels = 0, []
    for s in sources:
        if s.kind in WILD_KINDS:
            shutil.copyfile(s.file, out / s.file.name)
            n += s.kind == "wild_video"
            if s.kind == "wild_video" and s.speaker:
                labels.append((s.file.name, s.speaker))
    if labels:
        with open(out / WILD_LABELS, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "speaker"])
            w.writerows(sorted(labels))
    return n


def write_attribution(root: Path, kinds: tuple[str, ...], dst: Path) -> None:
    """The sources manifest's rows of the given kinds, copied beside the outputs."""
    with open(Path(root) / "MANIFEST.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [r for r in reader if r["kind"] in kinds]
        fields = reader.fieldnames
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fields, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
