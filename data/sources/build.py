"""How data/sources was made (run once by a maintainer; the stage only reads the result).

    .venv/bin/python data/sources/build.py --samples /work/shared/samples \
        --insightface-wheel /tmp/if/insightface-2.1-py3-none-any.whl

- portraits/: the sample portraits as they are, face crops from the photo that the insightface
  2.1 wheel ships (insightface/data/images/t1.jpg; the package is not a dependency), and one photo
  (the most frontal, closed-mouth one) of each of 14 of the 19 people in the samples' identities/.
  sample_data checks every portrait with the dlib detector before warping it and drops (with the
  reason) those with no face, several faces or a face too small.
- heldout/: both photos of the other 5 people of identities/ (kind ``heldout_portrait``): no stage
  reads them; they are faces no model has seen, for benchmarks/vae_quality.py. The 5 held out are
  the ones least fit to warp (open mouth or a small face) and appear in no talking video.
- speech/: utterances of about 3 s cut at pauses out of the real speech recordings, 16 kHz mono.
  The long recordings that belong to a talking video give their first 10 s to wild/ and the
  rest to speech/, so the two subsets share no audio.
- wild/: the real talking videos, first 10 s, re-encoded at 25 fps and at most 256 px, named
  HDTF-like ``<speaker>_<nnn>``; a same-stem 16 kHz .wav beside each video without an audio track.
  A video of a person who is also a portrait carries the portrait's speaker id in the manifest
  (sample_data writes it to wild/labels.csv), so the speaker-disjoint split keeps the person on
  one side (id02 of identities/ is the Obama of the videos: M004).
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
# identities/ of the samples (people id01..id19): speaker id, gender, photo; the most frontal,
# closed-mouth photo (<id>_1) of each person used for clips
IDENTITIES = [
    ("W008", "F", "identities/id01_1.jpg"),
    ("M004", "M", "identities/id02_1.jpg"),  # also in the wild videos (styletalk Obama_clip*, edtalk uncrop_Obama)
    ("M005", "M", "identities/id03_1.jpg"),
    ("M006", "M", "identities/id04_1.jpg"),
    ("M007", "M", "identities/id05_1.jpg"),
    ("W009", "F", "identities/id06_1.jpg"),
    ("M008", "M", "identities/id07_1.jpg"),
    ("M009", "M", "identities/id08_1.jpg"),
    ("M010", "M", "identities/id11_1.jpg"),
    ("M011", "M", "identities/id12_1.jpg"),
    ("W010", "F", "identities/id16_1.jpg"),
    ("M012", "M", "identities/id17_1.jpg"),
    ("M013", "M", "identities/id18_1.jpg"),
    ("M014", "M", "identities/id19_1.jpg"),
]
# held out of every stage (heldout/): all photos of these people; mouth gap (IOD) and face size
# of the first photo from dlib: id09 0.18 open, id10 32 px IOD, id13 0.14 open, id14 0.20 open,
# id15 41 px IOD
HELDOUT = ["id09", "id10", "id13", "id14", "id15"]
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
# video, separate wav (None: audio in the container), output stem (HDTF-like <speaker>_<nnn>),
# speaker id when the person is also a portrait ('' : the stem names the speaker)
WILD = [
    ("video/videoretalking__face_1.mp4", None, "videoretalking_face1_000", ""),
    ("video/videoretalking__face_2.mp4", None, "videoretalking_face2_000", ""),
    ("video/videoretalking__face_3.mp4", None, "videoretalking_face3_000", ""),
    ("video/videoretalking__face_5.mp4", None, "videoretalking_face5_000", ""),
    ("video/edtalk__uncrop_Obama.mp4", None, "edtalk_uncropObama_000", "M004"),
    ("video/edtalk__mouth_source.mp4", "video/edtalk__mouth_source.wav", "edtalk_mouthsource_000", ""),
    ("video/edtalk__pose_source2.mp4", None, "edtalk_posesource2_000", ""),
    ("video/liveportrait__d20.mp4", None, "liveportrait_d20_000", ""),
    ("video/styletalk__KristiNoem.mp4", "video/styletalk__KristiNoem.wav", "styletalk_KristiNoem_000", ""),
    ("video/styletalk__Obama_clip1.mp4", "video/styletalk__Obama_clip1.wav", "styletalk_Obama_000", "M004"),
    ("video/styletalk__Obama_clip2.mp4", "video/styletalk__Obama_clip2.wav", "styletalk_Obama_001", "M004"),
    ("video/styletalk__Obama_clip3.mp4", "video/styletalk__Obama_clip3.wav", "styletalk_Obama_002", "M004"),
    ("video/styletalk__andrew_clip_1.mp4", "video/styletalk__andrew_clip_1.wav", "styletalk_andrew_000", ""),
    ("video/styletalk__andrew_clip_2.mp4", "video/styletalk__andrew_clip_2.wav", "styletalk_andrew_001", ""),
    ("video/styletalk__feifeili_clip1.mp4", "video/styletalk__feifeili_clip1.wav", "styletalk_feifeili_001", ""),
    ("video/styletalk__feifeili_clip3.mp4", "video/styletalk__feifeili_clip3.wav", "styletalk_feifeili_000", ""),
    ("video/styletalk__reagan_clip1.mp4", "video/styletalk__reagan_clip1.wav", "styletalk_reagan_000", ""),
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
    with open(args.samples / "identities" / "MANIFEST.tsv", newline="") as f:
        people = {r["file"]: r for r in csv.DictReader(f, delimiter="\t")}
    rows = []

    def origin(sample: str) -> dict:
        m = meta[sample]
        return {"origin_repo": m["source_repo"], "origin_path": m["path_in_repo"], "commit": m["commit"],
                "licence": m["repo_license"], "what_it_shows": m["what_it_shows"]}

    def person(sample: str, kind: str, speaker: str, gender: str) -> dict:
        m = people[sample]
        name = f"{m['source_repo'].split('/')[-1]}__{Path(sample).stem}.jpg"  # e.g. deepface__id01_1.jpg
        return {"file": f"{'portraits' if kind == 'portrait' else 'heldout'}/{name}", "kind": kind,
                "speaker": speaker, "gender": gender, "origin_repo": m["source_repo"],
                "origin_path": m["path_in_repo"], "commit": m["commit"], "licence": m["repo_license"],
                "what_it_shows": f"Real photo, person {m['identity']} of the samples' identities/ "
                                 f"(face {m['face_px']} px, yaw {m['yaw_iod']} IOD, mouth gap {m['mouth_gap_iod']} IOD)",
                "derivation": f"samples' {sample} ({m['note']}), copied unchanged"}

    for sub in ("portraits", "heldout", "speech", "wild"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
        (HERE / sub).mkdir()

    for speaker, gender, sample in PORTRAITS:
        dst = HERE / "portraits" / Path(sample).name
        shutil.copyfile(args.samples / sample, dst)
        rows.append({"file": f"portraits/{dst.name}", "kind": "portrait", "speaker": speaker, "gender": gender,
                     **origin(sample), "derivation": "copied unchanged"})

    for speaker, gender, sample in IDENTITIES:
        row = person(sample, "portrait", speaker, gender)
        shutil.copyfile(args.samples / sample, HERE / row["file"])
        rows.append(row)
    for sample in sorted(people):
        if people[sample]["identity"] in HELDOUT:
            row = person(sample, "heldout_portrait", people[sample]["identity"], "")
            shutil.copyfile(args.samples / sample, HERE / row["file"])
            rows.append(row)

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

    for video, wav, stem, speaker in WILD:
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
        rows.append({"file": f"wild/{stem}.mp4", "kind": "wild_video", "speaker": speaker, **origin(video),
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
