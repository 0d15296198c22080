"""The `evaluate` report: DVC plot files, PNG figures and one self-contained HTML page.

- ``write_plots``: confusion matrices of both judges as CSV (``actual,predicted`` per clip, the
  shape of DVC's ``confusion`` template) and PNG, and the lip-sync lag curve (CSV + PNG).
- ``write_html``: metric table with the ceiling and floor rows, findings, notes, confusion
  matrices, frame strips of each emotion per identity (generated above real), the prior's
  embedding plot when it exists, the long render's first and last second side by side with its
  identity distance over time (``evaluate.long_render``), and the per-clip table. Every image is an inline data URI, so
  the file can be mailed or opened anywhere. A small script marks ``<body data-images-ok>``
  once every image has decoded (the browser test reads it).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from talk.evaluation import judges
from talk.media.io import encode_image
from talk.models.emotions import EMOTIONS

ROW_TITLES = {"model": "model", "real": "real clips (ceiling)", "floor": "reference frame repeated (floor)"}


# --------------------------------------------------------------------------------------------
# Figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def confusion_figure(mats: dict[str, np.ndarray], labels: tuple[str, ...], title: str) -> bytes:
    """One heat map per row (rows = requested emotion, columns = judged emotion) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 4.0), squeeze=False)
    for ax, (row, m) in zip(axes[0], mats.items()):
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.max()))
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("judged")
        ax.set_ylabel("requested")
        acc = np.trace(m) / max(1, m.sum())
        ax.set_title(f"{ROW_TITLES[row]}\nacc {acc:.2f} ({int(m.sum())} clips)", fontsize=9)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    fig.suptitle(title, fontsize=10)
    out = _png(fig)
    plt.close(fig)
    return out


def lag_figure(curves: dict[str, np.ndarray], max_offset: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    offsets = np.arange(-max_offset, max_offset + 1)
    for row, curve in curves.items():
        ax.plot(offsets, curve, marker="o", label=ROW_TITLES[row])
    ax.axvline(0, color="gray", lw=0.5)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("offset (frames; positive = mouth lags sound)")
    ax.set_ylabel("Pearson r, mouth opening vs loudness")
    ax.legend(fontsize=8)
    out = _png(fig)
    plt.close(fig)
    return out


def write_plots(folder: Path, clips, scores: dict, max_offset: int) -> dict[str, bytes]:
    """Write plots/*.csv + *.png; return the PNGs by name for the HTML report."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {}
    actual = [c.emotion for c in clips]

    mats = {}
    for row, ss in scores.items():
        pred = [s.metrics["clf_pred"] for s in ss]
        pd.DataFrame({"actual": actual, "predicted": pred}).to_csv(folder / f"confusion_clf_{row}.csv", index=False)
        mats[row] = judges.confusion([EMOTIONS.index(a) for a in actual], [EMOTIONS.index(p) for p in pred], len(EMOTIONS))
    figures["confusion_clf"] = confusion_figure(mats, EMOTIONS, "emotion classifier (8 classes, trained on real training frames)")

    keep = [i for i, c in enumerate(clips) if judges.fer_label(c.emotion) is not None]
    fer_actual = [judges.MEAD_TO_FER[clips[i].emotion] for i in keep]
    mats = {}
    for row, ss in scores.items():
        pred = [ss[i].metrics["fer_pred"] for i in keep]
        pd.DataFrame({"actual": fer_actual, "predicted": pred}).to_csv(folder / f"confusion_fer_{row}.csv", index=False)
        mats[row] = judges.confusion([judges.FER_CLASSES.index(a) for a in fer_actual],
                                     [judges.FER_CLASSES.index(p) for p in pred], len(judges.FER_CLASSES))
    figures["confusion_fer"] = confusion_figure(mats, judges.FER_CLASSES, "FER CNN (7 classes; contempt clips excluded)")

    curves = {row: np.mean([s.lag_curve for s in ss], axis=0) for row, ss in scores.items()}
    lag = pd.DataFrame({"offset": np.arange(-max_offset, max_offset + 1), **curves})
    lag.to_csv(folder / "sync_lag.csv", index=False, float_format="%.6g")
    figures["sync_lag"] = lag_figure(curves, max_offset)
    for name, data in figures.items():
        (folder / f"{name}.png").write_bytes(data)
    return figures


def strip_image(by_emotion: dict[str, dict[str, np.ndarray]], size: int, label_width: int = 150) -> bytes:
    """One identity's strips as JPEG: per emotion, a 'generated' row above a 'real' row."""
    tiles = []
    for emotion in sorted(by_emotion, key=EMOTIONS.index):
        for row in ("model", "real"):
            frames = by_emotion[emotion][row]  # (K, H, W, 3)
            cells = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
            label = np.full((size, label_width, 3), 255, np.uint8)
            cv2.putText(label, emotion, (6, size // 2 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(label, "generated" if row == "model" else "real", (6, size // 2 + 16),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (90, 90, 90) if row == "real" else (20, 90, 200), 1, cv2.LINE_AA)
            tiles.append(np.concatenate([label, *cells], axis=1))
        tiles.append(np.full((4, tiles[-1].shape[1], 3), 255, np.uint8))  # gap between emotions
    img = np.concatenate(tiles, axis=0)
    return encode_image(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 88])


def long_image(first: np.ndarray, last: np.ndarray, size: int, label_width: int = 150) -> bytes:
    """The long render's first-second frames above its last-second frames, as JPEG."""
    rows = []
    for name, frames in (("first second", first), ("last second", last)):
        cells = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
        label = np.full((size, label_width, 3), 255, np.uint8)
        cv2.putText(label, name, (6, size // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, *cells], axis=1))
    return encode_image(np.concatenate(rows, axis=0), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 88])


def long_figure(curve: np.ndarray, same_person: float) -> bytes:
    """Identity distance to the reference over the long render (s), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.0))
    ax.plot(curve[:, 0], curve[:, 1], marker=".")
    ax.axhline(same_person, color="gray", lw=0.8, ls="--", label=f"dlib same-person threshold {same_person}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("identity distance (dlib-128)")
    ax.legend(fontsize=8)
    out = _png(fig)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------
# HTML


@dataclasses.dataclass
class ReportData:
    rows: dict  # row -> metric -> value
    metrics: dict  # metric -> (label, direction, description)
    notes: dict  # notes.json content (findings, feature spaces, skipped, judge)
    per_clip: pd.DataFrame
    strips: dict  # speaker -> emotion -> row -> (K, H, W, 3) uint8
    plots: dict[str, bytes]  # name -> PNG
    prior_plot: Path | None = None
    vae_strip: Path | None = None  # fit_vae's roundtrip.png (held-out frames above their round trip)
    strip_size: int = 96
    long: object | None = None  # talk.evaluation.long_render.LongRender
    title: str = "talk: evaluation report"


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img src="{_uri(data, mime)}" alt="{html.escape(alt)}">'


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _verdict(key: str, direction: str, model, floor) -> str:
    """CSS class for the model cell: better or not better than the floor."""
    if model is None or floor is None or any(isinstance(v, float) and math.isnan(v) for v in (model, floor)):
        return ""
    if direction not in ("up", "down", "zero") or model == floor:
        return ""  # ties are neither (the findings list flags lip sync and emotion ties)
    if direction == "up":
        return "good" if model > floor else "bad"
    if direction == "down":
        return "good" if model < floor else "bad"
    return "good" if abs(model) < abs(floor) else "bad"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.name,th.name,td.desc{text-align:left}td.desc{color:#555;font-size:12px;max-width:420px}
td.good{background:#e3f6e3}td.bad{background:#fbe1e1}.findings{background:#fff4e5;border:1px solid #f0b15a;padding:8px 16px}
.notes li,.findings li{margin:4px 0}img{max-width:100%;height:auto;border:1px solid #eee}
details{margin-top:8px}table.clips{font-size:12px}
"""

SCRIPT = """
<script>
function talkCheckImages(){
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function(i){ return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute('data-images-ok', ok ? 'true' : 'false');
  document.body.setAttribute('data-image-count', String(imgs.length));
}
window.addEventListener('load', talkCheckImages);
</script>
"""


def metric_table(rows: dict, metrics: dict) -> str:
    keys = [k for k in metrics if any(k in r for r in rows.values())]
    head = "".join(f"<th>{html.escape(ROW_TITLES[r])}</th>" for r in rows)
    out = [f'<table class="metrics"><tr><th class="name">metric</th>{head}<th>better</th><th class="name">what it is</th></tr>']
    arrows = {"up": "&uarr; higher", "down": "&darr; lower", "zero": "closer to 0", "info": ""}
    for k in keys:
        label, direction, desc = metrics[k]
        cells = []
        for r in rows:
            v = rows[r].get(k)
            cls = _verdict(k, direction, v, rows["floor"].get(k)) if r == "model" else ""
            cells.append(f'<td class="{cls}" data-row="{r}">{_fmt(v)}</td>')
        out.append(f'<tr data-metric="{k}"><td class="name">{html.escape(label)}</td>{"".join(cells)}'
                   f'<td>{arrows[direction]}</td><td class="desc">{html.escape(desc)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def write_html(path: Path, data: ReportData) -> None:
    n = data.notes
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(data.title)}</title>"
             f"<style>{CSS}</style>{SCRIPT}</head><body>"]
    parts.append(f"<h1>{html.escape(data.title)}</h1>")
    ref = ("the first frame of the speaker's neutral clip" if n.get("reference") == "neutral" else "its first frame")
    if n.get("reference_fallbacks"):
        ref += f" ({n['reference_fallbacks']} clips without a neutral clip: their own first frame)"
    parts.append(f"<p>{n.get('clips', 0)} '{html.escape(str(n.get('split', '')))}' clips, {n.get('frames', 0)} frames, "
                 f"each rendered from {html.escape(ref)}, its own audio and its emotion label, and scored against the "
                 "real clip. Green / red: the model beats / does not beat the floor.</p>")
    if n.get("findings"):
        items = "".join(f"<li>{html.escape(f)}</li>" for f in n["findings"])
        parts.append(f'<div class="findings" id="findings"><h2>Findings</h2><ul>{items}</ul></div>')
    parts.append("<h2>Metrics</h2>")
    parts.append(metric_table(data.rows, data.metrics))
    notes = [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in n.get("feature_spaces", {}).items()]
    notes += [f"<li>{html.escape(s)}</li>" for s in n.get("skipped", [])]
    for key in ("ceiling_note", "floor_note"):
        if n.get(key):
            notes.append(f"<li>{html.escape(n[key])}</li>")
    judge = n.get("judge")
    if judge:
        notes.append(f"<li>emotion classifier: trained on {judge['frames']} frames of {judge['clips']} real "
                     f"'{html.escape(judge['split'])}' clips ({', '.join(judge['classes'])}); training-frame accuracy "
                     f"{judge['train_frame_acc']:.2f}</li>")
    parts.append(f'<h2>Notes</h2><ul class="notes">{"".join(notes)}</ul>')

    parts.append("<h2>Emotion judges</h2>")
    if n.get("judge_ceiling"):
        parts.append(f'<p class="findings" id="judge-ceiling">{html.escape(n["judge_ceiling"])}</p>')
    for name in ("confusion_clf", "confusion_fer"):
        if name in data.plots:
            parts.append(f"<p>{_img(data.plots[name], name)}</p>")
    if "sync_lag" in data.plots:
        parts.append("<h2>Lip sync</h2><p>Mouth opening vs loudness correlation at each audio-video offset, averaged over clips.</p>")
        parts.append(f"<p>{_img(data.plots['sync_lag'], 'lip-sync lag curve')}</p>")

    parts.append("<h2>Frames per emotion and identity</h2><p>Evenly spaced frames of one clip per emotion: "
                 "the generated clip above the real one.</p>")
    for speaker in sorted(data.strips):
        jpg = strip_image(data.strips[speaker], data.strip_size)
        parts.append(f"<h3>{html.escape(speaker)}</h3><p>{_img(jpg, f'strips {speaker}', 'image/jpeg')}</p>")

    if data.vae_strip is not None and data.vae_strip.is_file():
        parts.append("<h2>VAE round trip</h2><p>Held-out val frames (top) and their encode &rarr; decode through "
                     "the VAE (bottom): the ceiling of every render (fit_vae's metrics.json has the figures).</p>")
        parts.append(f"<p>{_img(data.vae_strip.read_bytes(), 'VAE round trip')}</p>")

    if data.long is not None:
        from talk.evaluation.metrics.identity import SAME_PERSON

        lr = data.long
        m = lr.metrics
        parts.append(f'<h2 id="long-render">Long render</h2><p>{m["long_seconds"]:.1f} s of {html.escape(lr.speaker)}\'s '
                     f"test speech ({len(lr.clips)} clips concatenated) rendered in one go from the reference: identity "
                     f"distance {_fmt(m['long_id_distance'])}, drift (last second minus first) {_fmt(m['long_id_drift'])}; "
                     f"face sharpness ratio {_fmt(m['long_sharpness_ratio_first'])} in the first second, "
                     f"{_fmt(m['long_sharpness_ratio_last'])} in the last; face ΔE {_fmt(m['long_delta_e_first'])} "
                     f"then {_fmt(m['long_delta_e_last'])}.</p>")
        parts.append(f"<p>{_img(long_image(lr.first, lr.last, data.strip_size), 'long render first and last second', 'image/jpeg')}</p>")
        parts.append(f"<p>{_img(long_figure(lr.curve, SAME_PERSON), 'long render identity distance')}</p>")

    if data.prior_plot is not None and data.prior_plot.is_file():
        parts.append("<h2>Emotion prior embeddings</h2>")
        parts.append(f"<p>{_img(data.prior_plot.read_bytes(), 'prior embeddings')}</p>")

    if len(data.per_clip):
        parts.append("<h2>Per clip</h2><details><summary>per-clip metrics (per_clip.csv)</summary>")
        parts.append(data.per_clip.to_html(index=False, classes="clips", float_format=lambda v: f"{v:.3f}", na_rep="n/a", border=0))
        parts.append("</details>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def print_summary(rows: dict, metrics: dict) -> None:
    """The metric table on the console (rich)."""
    from rich.table import Table

    from talk.core.runtime import console

    table = Table(title="evaluate")
    table.add_column("metric")
    for r in rows:
        table.add_column(ROW_TITLES[r], justify="right")
    for k, (label, _, _) in metrics.items():
        if any(k in r for r in rows.values()):
            table.add_row(label, *(_fmt(rows[r].get(k)) for r in rows))
    console.print(table)
