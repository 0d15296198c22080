"""Discovery: every usable talking-face clip under the data roots, its labels and a
speaker-disjoint train/val/test split (docs/method.md §1 "Data", §3; the manifest it makes:
talk/data/manifest.py).

Layouts, detected per root (every video file under the root is a candidate, hidden entries skipped):

- ``mead``: ``<speaker>/video/<view>/<emotion>/level_<k>/<nnn>.mp4`` (MEAD; only ``views`` are
  kept, the frontal view by default). Audio: the video's own track, else ``<nnn>.wav`` beside it,
  else MEAD's ``<speaker>/audio/<emotion>/level_<k>/<nnn>.{wav,m4a,...}``.
- ``flat``: videos directly in the root (HDTF style); the speaker is parsed from the file stem by
  ``speaker_pattern`` (``WRA_AdamKinzinger_000`` -> ``WRA_AdamKinzinger``).
- ``tree``: videos in sub-folders (any depth); the speaker is the top-level folder.

In every layout a video without an audio track takes the audio file with the same stem beside it,
and ``<stem>.gt.csv`` beside a video is its ground-truth table (``gt_path``). A labels CSV
(``labels_csv``, looked up inside each root; columns ``path`` relative to the root, optional
``speaker``, ``emotion``, ``level``) overrides the labels parsed from the layout.

Every candidate is probed (``talk.media.io.probe``, ``examine``); a file that is unreadable or
unusable goes to the rejects table with its reason and the run continues. ``has_audio`` is true
when the video carries its own audio track (then ``audio_path == video_path``); a clip without any
usable audio is rejected. The split is by speaker (no speaker in two splits), MEAD's usual test
speakers go to test (§3), the rest is shuffled with ``seed`` and filled per subset towards
``fractions`` of its clips (``split_speakers``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.params import rng
from talk.data.manifest import COLUMNS, REJECT_COLUMNS, SPLITS
from talk.media import io as media
from talk.models.emotions import EMOTIONS, LEVELS

AUDIO_EXTS = (".wav", ".m4a", ".flac", ".mp3", ".aac", ".ogg")  # companion audio, in preference order
GT_SUFFIX = ".gt.csv"  # ground-truth table beside a video: <stem>.gt.csv
MEAD_RE = re.compile(r"^(?P<speaker>[^/]+)/video/(?P<view>[^/]+)/(?P<emotion>[^/]+)/level_(?P<level>\d+)/[^/]+$")


@dataclasses.dataclass(frozen=True)
class DiscoverConfig:
    """params.yaml ``discover``: reads ``roots`` under ``paths.raw``, writes ``paths.manifest`` and ``paths.rejects``."""

    roots: tuple[Path, ...] = (Path("mead"), Path("wild"))  # data roots, relative to paths.raw unless absolute; each one's folder name is its subset
    labels_csv: Path | None = Path("labels.csv")  # labels table looked up inside each root (path relative to the root); null = none
    views: tuple[str, ...] = ("front",)  # MEAD camera views kept
    extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")  # video file suffixes (case-insensitive)
    speaker_pattern: str = r"^(?P<speaker>.+?)(?:[_-]+(?:clip|part|seg)?[_-]?\d+)?$"  # regex on a file stem; group 'speaker' (flat layout, root-level files)
    min_duration: float = dataclasses.field(default=0.5, metadata=rng(0))  # s, shorter clips are rejected
    min_side: int = dataclasses.field(default=64, metadata=rng(1))  # px, videos with a smaller width or height are rejected
    max_av_gap: float = dataclasses.field(default=0.5, metadata=rng(0))  # s, largest |audio - video| length for a separate audio file
    fractions: tuple[float, ...] = dataclasses.field(default=(0.8, 0.1, 0.1), metadata=rng(0, 1))  # train, val, test share of each subset's clips
    test_speakers: tuple[str, ...] = ("M003", "M030", "W009", "W015")  # always in test when present (MEAD protocol)
    seed: int = dataclasses.field(default=0, metadata=rng(0))  # split shuffle seed (kept apart from base.seed so the split stays put)

    def validate(self) -> None:
        if not self.roots:
            raise TalkError("discover.roots: give at least one data root")
        if len(self.fractions) != 3 or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise TalkError(f"discover.fractions: train, val, test must sum to 1, got {list(self.fractions)}")
        try:
            pattern = re.compile(self.speaker_pattern)
        except re.error as e:
            raise TalkError(f"discover.speaker_pattern: not a valid regex ({e})") from None
        if "speaker" not in pattern.groupindex:
            raise TalkError("discover.speaker_pattern: needs a named group (?P<speaker>...)")
        if self.labels_csv is not None and self.labels_csv.is_absolute():
            raise TalkError("discover.labels_csv: give a path relative to each root (or null)")
        bad = [e for e in self.extensions if not e.startswith(".")]
        if bad:
            raise TalkError(f"discover.extensions: suffixes start with a dot, got {bad}")

    def root_paths(self, raw: Path) -> tuple[Path, ...]:
        """``roots`` resolved against ``paths.raw`` (absolute ones as they are)."""
        return tuple(r if r.is_absolute() else Path(raw) / r for r in self.roots)


@dataclasses.dataclass
class Candidate:
    """A video file and the labels its layout (or the labels CSV) gives it."""

    subset: str
    root: Path
    rel: str  # posix path relative to the root
    speaker: str
    emotion: str = ""
    level: int = 0
    view: str = ""
    mead_audio: tuple[str, ...] = ()  # MEAD audio-tree locations (relative to the root)
    problem: str = ""  # a reason to reject before probing

    @property
    def path(self) -> Path:
        return self.root / self.rel


# --------------------------------------------------------------------------------------------
# Finding candidates


def _videos(root: Path, extensions: Sequence[str]) -> list[str]:
    """Video files under ``root`` (posix paths relative to it), sorted, hidden entries skipped."""
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def detect_layout(rels: Sequence[str]) -> str:
    """``mead`` when any video sits in MEAD's tree, ``flat`` when all are at the top, else ``tree``."""
    if any(MEAD_RE.match(r) for r in rels):
        return "mead"
    if all("/" not in r for r in rels):
        return "flat"
    return "tree"


def _stem_speaker(stem: str, pattern: re.Pattern) -> str:
    m = pattern.match(stem)
    return (m.group("speaker") if m and m.group("speaker") else stem).strip("_- ") or stem


def _mead_candidate(c: Candidate, cfg: DiscoverConfig) -> Candidate | None:
    m = MEAD_RE.match(c.rel)
    if m is None:
        c.problem = "outside the MEAD layout <speaker>/video/<view>/<emotion>/level_<k>/<clip>"
        return c
    if m["view"] not in cfg.views:
        return None  # another camera, not asked for
    c.speaker, c.view = m["speaker"], m["view"]
    emotion, level = m["emotion"].lower(), int(m["level"])
    if emotion not in EMOTIONS:
        c.problem = f"unknown emotion folder '{m['emotion']}' (expected one of {', '.join(EMOTIONS)})"
    elif level not in LEVELS:
        c.problem = f"unknown intensity folder 'level_{m['level']}' (expected level_1..level_{max(LEVELS)})"
    c.emotion, c.level = emotion, level
    stem = Path(c.rel).stem
    c.mead_audio = tuple(f"{c.speaker}/audio/{m['emotion']}/level_{m['level']}/{stem}{e}" for e in AUDIO_EXTS)
    return c


def _read_labels(path: Path) -> dict[str, dict]:
    """``path`` -> {speaker?, emotion?, level?} from a labels CSV (TalkError when malformed)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TalkError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "path" not in table.columns:
        raise TalkError(f"{path}: needs a 'path' column (found {', '.join(table.columns) or 'none'})")
    labels = {}
    for row in table.to_dict("records"):
        rel = Path(row["path"].strip()).as_posix()
        if rel in ("", "."):
            continue
        labels[rel] = {k: row[k].strip() for k in ("speaker", "emotion", "level") if k in row}
    return labels


def _apply_labels(c: Candidate, row: dict, where: str) -> None:
    """Non-empty cells override the layout's labels; an emotion without a level gets level 1."""
    if row.get("speaker"):
        c.speaker = row["speaker"]
    emotion = row.get("emotion", "").lower()
    if emotion:
        if emotion not in EMOTIONS:
            c.problem = f"{where}: unknown emotion '{row['emotion']}' (expected one of {', '.join(EMOTIONS)})"
            return
        c.emotion, c.level = emotion, c.level if c.level in LEVELS else 1
    level = row.get("level", "")
    if level and c.emotion:
        try:
            c.level = int(float(level))
        except ValueError:
            c.level = -1
        if c.level not in LEVELS:
            c.problem = f"{where}: level '{level}' is not one of {', '.join(map(str, LEVELS))}"


def find_candidates(root: Path, cfg: DiscoverConfig) -> tuple[str, list[Candidate]]:
    """The layout of ``root`` and its candidate videos with their labels."""
    if not root.is_dir():
        raise TalkError(f"data root not found: {root} (discover.roots)")
    subset = _safe(root.resolve().name) or "data"
    rels = _videos(root, cfg.extensions)
    layout = detect_layout(rels)
    pattern = re.compile(cfg.speaker_pattern)
    labels: dict[str, dict] = {}
    labels_path = root / cfg.labels_csv if cfg.labels_csv is not None else None
    if labels_path is not None and labels_path.is_file():
        labels = _read_labels(labels_path)
    out, other_views = [], 0
    for rel in rels:
        c = Candidate(subset=subset, root=root, rel=rel, speaker="")
        if layout == "mead":
            if _mead_candidate(c, cfg) is None:
                other_views += 1
                continue
        elif "/" in rel:  # tree: the top-level folder names the speaker
            c.speaker = rel.split("/", 1)[0]
        else:
            c.speaker = _stem_speaker(Path(rel).stem, pattern)
        if rel in labels:
            _apply_labels(c, labels[rel], labels_path.name)
        out.append(c)
    for rel in sorted(set(labels) - set(rels)):  # listed but absent: say so
        out.append(Candidate(subset=subset, root=root, rel=rel, speaker="", problem=f"listed in {labels_path.name} but not found"))
    if other_views:
        runtime.log.info("%s: %d videos of views other than %s skipped", root, other_views, ", ".join(cfg.views))
    return layout, out


# --------------------------------------------------------------------------------------------
# Probing


def _reason(e: TalkError, path: Path) -> str:
    """A probe error without the leading file name (the rejects table has its own column)."""
    text = str(e)
    return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text


def _companion_audio(c: Candidate) -> Path | None:
    here = c.path
    for ext in AUDIO_EXTS:
        p = here.with_suffix(ext)
        if p.is_file():
            return p
    for rel in c.mead_audio:
        p = c.root / rel
        if p.is_file():
            return p
    return None


def examine(c: Candidate, cfg: DiscoverConfig) -> tuple[dict | None, str]:
    """A manifest row (without clip_id and split) or the reason the candidate is unusable."""
    if c.problem:
        return None, c.problem
    path = c.path
    try:
        info = media.probe(path)
        decoded = media.decoded_duration(path) if info.has_video else None
    except TalkError as e:
        return None, _reason(e, path)
    if not info.has_video:
        return None, "no video stream"
    if decoded.damaged:  # the manifest records what decodes, and says when it is less than announced
        runtime.log.warning("%s; the manifest records the %.2f s that decode", decoded.describe(), decoded.kept)
        info = dataclasses.replace(info, duration=min(decoded.kept, decoded.seconds))
    if not info.fps > 0:
        return None, "unknown frame rate"
    if info.duration < cfg.min_duration:
        return None, f"too short: {info.duration:.2f} s < discover.min_duration {cfg.min_duration:g} s"
    if min(info.width, info.height) < cfg.min_side:
        return None, f"too small: {info.width}x{info.height} px < discover.min_side {cfg.min_side}"
    audio = path
    if not info.has_audio:
        audio = _companion_audio(c)
        if audio is None:
            return None, "no audio track and no audio file with the same stem"
        try:
            a = media.probe(audio)
        except TalkError as e:
            return None, f"no audio track; {audio.name}: {_reason(e, audio)}"
        if not a.has_audio:
            return None, f"no audio track; {audio.name} holds no audio stream"
        if abs(a.duration - info.duration) > cfg.max_av_gap:
            return None, (
                f"{audio.name} lasts {a.duration:.2f} s but the video {info.duration:.2f} s "
                f"(more than discover.max_av_gap {cfg.max_av_gap:g} s apart)"
            )
    gt = path.with_name(path.stem + GT_SUFFIX)
    return {
        "speaker": c.speaker,
        "emotion": c.emotion,
        "level": c.level if c.emotion else 0,
        "video_path": str(path),
        "audio_path": str(audio),
        "duration": round(info.duration, 4),
        "fps": round(info.fps, 4),
        "width": info.width,
        "height": info.height,
        "has_audio": info.has_audio,
        "subset": c.subset,
        "gt_path": str(gt) if gt.is_file() else "",
    }, ""


# --------------------------------------------------------------------------------------------
# Clip ids and the split


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")


def clip_id(c: Candidate) -> str:
    """``M003_angry_3_001`` for MEAD (view added when not frontal), else ``<subset>_<path>``."""
    stem = Path(c.rel).with_suffix("").as_posix()
    if c.view:
        view = "" if c.view == "front" else f"{c.view}_"
        return _safe(f"{c.speaker}_{view}{c.emotion}_{c.level}_{Path(stem).name}")
    return _safe(f"{c.subset}_{stem.replace('/', '_')}")


def unique_ids(ids: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Make ids unique: a repeated id gets a short hash of its file path appended."""
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    return [f"{i}_{hashlib.sha1(k.encode()).hexdigest()[:6]}" if seen[i] > 1 else i for i, k in zip(ids, keys)]


def split_speakers(
    clips: pd.DataFrame, fractions: Sequence[float], test_speakers: Sequence[str], seed: int
) -> dict[str, str]:
    """Speaker -> split. Speaker-disjoint; ``test_speakers`` present go to test; each subset's
    other speakers, shuffled by ``seed``, fill test then val towards ``fractions`` of the subset's
    clips (one speaker at least when the fraction is above 0, one left for train)."""
    assign = {s: "test" for s in test_speakers if s in set(clips["speaker"])}
    for subset in sorted(clips["subset"].unique()):
        counts = clips.loc[clips["subset"] == subset, "speaker"].value_counts()
        total = int(counts.sum())
        done = {split: sum(int(n) for s, n in counts.items() if assign.get(s) == split) for split in SPLITS}
        free = sorted(s for s in counts.index if s not in assign)
        order = [free[i] for i in np.random.default_rng([seed, zlib.crc32(subset.encode())]).permutation(len(free))]
        for split, fraction in (("test", fractions[2]), ("val", fractions[1])):
            need = fraction * total - done[split]
            taken = 0
            for s in list(order):
                if len(order) <= 1 or need <= 0:
                    break
                n = int(counts[s])
                if taken == 0 and done[split] == 0 or n < 2 * need:  # the first one, then only if it gets closer
                    assign[s] = split
                    order.remove(s)
                    need -= n
                    taken += 1
        for s in order:
            assign[s] = "train"
    return assign


# --------------------------------------------------------------------------------------------
# All roots


def _check_roots(roots: Sequence[Path]) -> None:
    resolved = []
    for root in roots:
        if not Path(root).is_dir():
            raise TalkError(f"data root not found: {root} (discover.roots)")
        resolved.append(Path(root).resolve())
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i < j and (a == b or a in b.parents or b in a.parents):
                raise TalkError(f"discover.roots overlap: {roots[i]} and {roots[j]}")


def discover(cfg: DiscoverConfig, raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Manifest, rejects and each root's layout for the roots under ``raw`` (nothing written)."""
    candidates, layouts = [], {}
    roots = cfg.root_paths(raw)
    _check_roots(roots)
    for root in roots:
        layout, found = find_candidates(Path(root), cfg)
        layouts[str(root)] = layout
        candidates += found
        runtime.log.info("%s: %s layout, %d candidate videos", root, layout, len(found))
    rows, rejects = [], []
    for c in runtime.track(candidates, "probing videos"):
        row, reason = examine(c, cfg)
        if row is None:
            rejects.append({"subset": c.subset, "path": str(c.path), "reason": reason})
        else:
            row["clip_id"] = clip_id(c)
            rows.append(row)
    rejected = pd.DataFrame(rejects, columns=list(REJECT_COLUMNS))
    if not rows:
        first = f": {rejects[0]['path']}: {rejects[0]['reason']}" if rejects else ""
        raise TalkError(
            f"no usable clips under {', '.join(map(str, roots))} "
            f"({len(rejects)} rejected{first})"
        )
    manifest = pd.DataFrame(rows)
    manifest["clip_id"] = unique_ids(list(manifest["clip_id"]), list(manifest["video_path"]))
    speakers = split_speakers(manifest, cfg.fractions, cfg.test_speakers, cfg.seed)
    manifest["split"] = manifest["speaker"].map(speakers)
    return manifest[list(COLUMNS)], rejected, layouts


