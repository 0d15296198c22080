"""How data/sources was made (run once by a maintainer; the stage only reads the result).

    .venv/bin/python data/sources/build.py --samples /work/shared/samples \
        --insightface-wheel /tmp/if/insightface-2.1-py3-none-any.whl

- portraits/: the sample portraits as they are, plus face crops from the photo that the
  insightface 2.1 wheel ships (insightface/data/images/t1.jpg); the package is not a dependency.
- speech/: utterances of about 3 s cut at pauses out of the real speech recordings, 16 kHz mono.
  The long recordings that belong to a talking video give their first 10 s to wild/ and the
  rest to speech/, so the two subsets share no audio.
- wild/: the real talking videos, first 10 s, re-encoded at 25 fps and at most 256 px, named
  HDTF-like ``<speaker>_000``; a same-stem 16 kHz .wav beside each video without an audio track.
- MANIFEST.tsv: one row per file with its origin, licence, what it shows and how it was cut.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from talk.core.fs import sha256_file  # noqa: E402
from talk.media import io as media  # noqa: E402

HERE = Path(__file__).resolve().parent
RATE = media.AUDIO_RATE
WILD_SECONDS = 10.0

# speaker id, gender, sample file; the 7 neutral frontal closed-mouth portraits first
PORTRAITS = [
    ("W001", "F", "image/dreamtalk__cut_img.png"),
    ("M001", "M", "image/dreamtalk__f30.png"),
    ("M002", "M", "image/eamm__brade2.jpg"),
    ("W002", "F", "image/eamm__scarlett.jpg"),
    ("W003", "F", "image/hallo__6.jpg"),
    ("W004", "F", "image/sadtalker__people_0.png"),
    ("W005", "F", "image/edtalk__identity_source.jpg"),
    ("W006", "F", "image/edtalk__uncrop_face.jpg"),
]
# faces cut from insightface's t1.jpg (group photo): box centre x, y and half side, px
INSIGHTFACE_FACES = [
    ("M003", "M", 503, 348, 140, "man, dark hair, slight smile, head tilted"),
    ("W007", "F", 121, 336, 140, "woman, long blonde hair, mouth closed, eyes lowered, head tilted"),
]
# speech: sample file, gender (from median F0), emotion label, start s, end s (None: to the end)
SPEECH = [
    ("audio/emotalk__angry1.wav", "F", "angry", 0.0, None),
    ("audio/emotalk__happy.wav", "F", "happy", 0.0, None),
    ("audio/sadtalker__RD_Radio31_000.wav", "F", "", 0.0, None),
    ("video/styletalk__KristiNoem.wav", "F", "", WILD_SECONDS, None),
    ("video/styletalk__Obama_clip1.wav", "M", "", WILD_SECONDS, None),
    ("video/styletalk__andrew_clip_1.wav", "M", "", WILD_SECONDS, None),
    ("video/styletalk__reagan_clip1.wav", "M", "", WILD_SECONDS, None),
]
WILD = [  # video, separate wav (None: audio in the container), output stem (HDTF-like <speaker>_<nnn>)
    ("video/videoretalking__face_1.mp4", None, "videoretalking_face1_000"),
    ("video/videoretalking__face_5.mp4", None, "videoretalking_face5_000"),
    ("video/styletalk__KristiNoem.mp4", "video/styletalk__KristiNoem.wav", "styletalk_KristiNoem_000"),
    ("video/styletalk__Obama_clip1.mp4", "video/styletalk__Obama_clip1.wav", "styletalk_Obama_000"),
    ("video/styletalk__andrew_clip_1.mp4", "video/styletalk__andrew_clip_1.wav", "styletalk_andrew_000"),
    ("video/styletalk__feifeili_clip3.mp4", "video/styletalk__feifeili_clip3.wav", "styletalk_feifeili_000"),
    ("video/styletalk__reagan_clip1.mp4", "video/styletalk__reagan_clip1.wav", "styletalk_reagan_000"),
]
COLUMNS = ["file", "kind", "speaker", "gender", "emotion", "origin_repo", "origin_path", "commit",
           "licence", "what_it_shows", "derivation", "sha256_16"]


def frame_rms(x: np.ndarray, hop: int = RATE // 50) -> np.ndarray:
    n = len(x) // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)


def cut_points(x: np.ndarray, lo: float = 2.8, hi: float = 3.8) -> list[tuple[int, int]]:
    """Utterances of lo..hi s, cut at the quietest 20 ms frame of each window (a pause)."""
    hop = RATE // 50
    rms = frame_rms(x)
    start = int(np.argmin(rms[: int(0.5 * 50)])) if len(rms) > 25 else 0
    out = []
    while True:
        a, b = start + int(lo * 50), start + int(hi * 50)
        if b > len(rms):
            if len(rms) - start >= lo * 50:  # the tail is long enough to keep
                out.append((start * hop, len(x)))
            break
        end = a + int(np.argmin(rms[a:b]))
        out.append((start * hop, end * hop))
        start = end
    return out


def trim_silence(x: np.ndarray, keep: float = 0.15) -> tuple[int, int]:
    rms = frame_rms(x)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -35)
    hop = RATE // 50
    a = max(int(loud[0] * hop - keep * RATE), 0)
    b = min(int((loud[-1] + 1) * hop + keep * RATE), len(x))
    return a, b


def sha16(path: Path) -> str:
    return sha256_file(path)[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--insightface-wheel", type=Path, required=True)
    args = ap.parse_args()
    with open(args.samples / "MANIFEST.tsv", newline="") as f:
        meta = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    rows = []

    def origin(sample: str) -> dict:
        m = meta[sample]
        return {"origin_repo": m["source_repo"], "origin_path": m["path_in_repo"], "commit": m["commit"],
                "licence": m["repo_license"], "what_it_shows": m["what_it_shows"]}

    for sub in ("portraits", "speech", "wild"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
        (HERE / sub).mkdir()

    for speaker, gender, sample in PORTRAITS:
        dst = HERE / "portraits" / Path(sample).name
        shutil.copyfile(args.samples / sample, dst)
        rows.append({"file": f"portraits/{dst.name}", "kind": "portrait", "speaker": speaker, "gender": gender,
                     **origin(sample), "derivation": "copied unchanged"})

    with zipfile.ZipFile(args.insightface_wheel) as z, tempfile.TemporaryDirectory() as tmp:
        src = Path(z.extract("insightface/data/images/t1.jpg", tmp))
        img = cv2.imread(str(src))
        for speaker, gender, cx, cy, half, what in INSIGHTFACE_FACES:
            crop = img[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half]
            name = f"insightface__t1_{speaker}.jpg"
            cv2.imwrite(str(HERE / "portraits" / name), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
            rows.append({
                "file": f"portraits/{name}", "kind": "portrait", "speaker": speaker, "gender": gender,
                "origin_repo": "deepinsight/insightface (PyPI wheel insightface==2.1)",
                "origin_path": "insightface/data/images/t1.jpg", "commit": f"wheel sha256 {sha16(args.insightface_wheel)}",
                "licence": "MIT (library); the photo is a third-party group picture shipped as test data",
                "what_it_shows": f"Real photo, {what}",
                "derivation": f"crop x {max(cx - half, 0)}..{cx + half}, y {max(cy - half, 0)}..{cy + half} of t1.jpg, JPEG q95",
            })

    for sample, gender, emotion, t0, t1 in SPEECH:
        x = media.read_audio(args.samples / sample)
        x = x[int(t0 * RATE): None if t1 is None else int(t1 * RATE)]
        x = x / max(float(np.abs(x).max()), 1e-6) * 0.9 if np.abs(x).max() > 1 else x
        if emotion:  # a single acted sentence: trim the silence around it
            a, b = trim_silence(x)
            pieces = [(a, b)]
        else:
            pieces = cut_points(x)
        for k, (a, b) in enumerate(pieces, 1):
            name = f"{Path(sample).stem}__{k:02d}.wav"
            media.write_wav(HERE / "speech" / name, x[a:b])
            rows.append({"file": f"speech/{name}", "kind": "speech", "gender": gender, "emotion": emotion,
                         **origin(sample),
                         "derivation": f"{t0 + a / RATE:.2f}-{t0 + b / RATE:.2f} s of the recording, 16 kHz mono"})

    for video, wav, stem in WILD:
        frames = media.read_video(args.samples / video, fps=media.VIDEO_FPS)[: int(WILD_SECONDS * media.VIDEO_FPS)]
        h, w = frames.shape[1:3]
        scale = min(1.0, 256 / max(h, w))
        size = (int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2)
        if size != (w, h):
            frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        n = len(frames)
        seconds = n / media.VIDEO_FPS
        if wav is None:
            audio = media.read_audio(args.samples / video)[: int(seconds * RATE)]
            media.write_video(HERE / "wild" / f"{stem}.mp4", frames, audio=audio, crf=20)
        else:
            media.write_video(HERE / "wild" / f"{stem}.mp4", frames, crf=20)
            audio = media.read_audio(args.samples / wav)[: int(seconds * RATE)]
            media.write_wav(HERE / "wild" / f"{stem}.wav", audio)
            rows.append({"file": f"wild/{stem}.wav", "kind": "wild_audio", **origin(wav),
                         "derivation": f"first {len(audio) / RATE:.2f} s, 16 kHz mono"})
        rows.append({"file": f"wild/{stem}.mp4", "kind": "wild_video", **origin(video),
                     "derivation": f"first {seconds:.2f} s, 25 fps, {size[0]}x{size[1]}, H.264 crf 20"
                                   + (", AAC 16 kHz mono" if wav is None else "")})

    for r in rows:
        r["sha256_16"] = sha16(HERE / r["file"])
    rows.sort(key=lambda r: r["file"])
    with open(HERE / "MANIFEST.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, delimiter="\t", restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    total = sum((HERE / r["file"]).stat().st_size for r in rows)
    print(f"{len(rows)} files, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
