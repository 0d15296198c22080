"""The Gradio page of `talk serve` and the server loop around it.

The page: a portrait (upload, or one of the sample identities) whose detected face crop is shown as
soon as it is given; speech (upload or record); the emotion by label with an intensity slider, a
blend of emotions with weights, or a reference clip; an optional style (a preset or a reference
clip); the guidance scales, steps, seed and paste-back. A render shows a progress bar (frames done
/ total), then the mp4 with its audio and a download link. A user's error is one line in the
status box; the server keeps serving.

Offline by construction: analytics off, no share link, no server-side rendering (no Node), system
fonts only (no Google Fonts), MCP off; the page's scripts are Gradio's bundled files. Uploads and
renders live in one temporary folder (``GRADIO_TEMP_DIR``), trimmed while serving
(``serve.keep_minutes``) and removed when the server stops. Renders run ``serve.concurrency`` at a
time through Gradio's queue (``serve.queue_size`` waiting at most).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from talk.core.errors import TalkError
from talk.models.emotions import EMOTIONS
from talk.web.service import NO_STYLE, Request, Service

MODES = {"label": "an emotion label", "blend": "a blend of emotions", "reference": "a reference clip"}
UPLOAD = "upload your own"  # the identity choice that leaves the portrait to the user
CSS = """
#status .error { color: #b00020; font-weight: 600; }
#status .ok { color: #1b5e20; }
footer { display: none !important; }
"""


def offline_environment(workdir: Path) -> None:
    """Set before Gradio is imported: uploads in ``workdir``, no analytics or telemetry."""
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_SSR_MODE"] = "False"
    os.environ.setdefault("GRADIO_MCP_SERVER", "False")


def theme():
    """Gradio's default look with system fonts only (its default fetches IBM Plex from Google Fonts)."""
    import gradio as gr

    sans = [gr.themes.Font("system-ui"), gr.themes.Font("Segoe UI"), gr.themes.Font("Helvetica"), "sans-serif"]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("DejaVu Sans Mono"), "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def message(text: str, error: bool = False) -> str:
    """The status box's one line (HTML inside Markdown)."""
    from html import escape

    kind = "error" if error else "ok"
    return f'<p class="{kind}">{"error: " if error else ""}{escape(text)}</p>'


def _path(value: Any) -> Path | None:
    """A Gradio file value (a path string, or a dict / object with a path) as a Path."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    value = getattr(value, "path", None) or getattr(value, "name", None) or value
    return Path(str(value))


def enlarged(crop, side: int = 160):
    """A small crop scaled up by a whole factor (nearest neighbour: its pixels as the model sees them)."""
    import numpy as np

    k = max(1, side // max(crop.shape[:2]))
    return np.repeat(np.repeat(crop, k, axis=0), k, axis=1) if k > 1 else crop


def build(service: Service, load_error: str | None = None):
    """The page (a ``gr.Blocks``) over ``service``; ``load_error``: why the pipeline is not loaded."""
    import gradio as gr

    d = service.defaults()
    identities = service.identities()
    cfg = service.cfg
    with gr.Blocks(title="talk", analytics_enabled=False,
                   delete_cache=(max(60, int(cfg.keep_minutes * 60) // 4), int(cfg.keep_minutes * 60))) as page:
        gr.Markdown("## talk: a talking portrait from a picture, speech and an emotion")
        banner = gr.Markdown(message(load_error, True) if load_error else "", elem_id="banner", visible=bool(load_error))
        with gr.Row():
            with gr.Column(scale=1):
                identity = gr.Dropdown([UPLOAD, *identities], value=UPLOAD, label="sample identity", elem_id="identity")
                image = gr.Image(type="filepath", label="portrait", sources=["upload", "clipboard"], height=240,
                                 elem_id="portrait")
                crop = gr.Image(label="the face the model sees", interactive=False, height=160, elem_id="crop")
                audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="speech (any format PyAV reads)",
                                 elem_id="speech")
            with gr.Column(scale=1):
                mode = gr.Radio(list(MODES), value="label", label="emotion from", elem_id="mode")
                emotion = gr.Dropdown(list(EMOTIONS), value=d["emotion"], label="emotion", elem_id="emotion")
                intensity = gr.Slider(0.0, 1.0, value=d["intensity"], step=0.05, label="intensity", elem_id="intensity")
                with gr.Group(visible=False) as blend_box:
                    gr.Markdown("blend weights (rest neutral; normalised when they sum above 1)")
                    weights = [gr.Slider(0.0, 1.0, value=0.0, step=0.05, label=e, elem_id=f"blend-{e}")
                               for e in EMOTIONS if e != "neutral"]
                emotion_from = gr.File(label="emotion reference clip (video or audio, or a `talk embed` .npz)",
                                       file_types=["video", "audio", ".npz"], visible=False, elem_id="emotion-from")
                styles = service.styles()
                style = gr.Dropdown(styles, value=NO_STYLE, label="speaking style (SVP)", interactive=len(styles) > 1,
                                    elem_id="style")
                style_from = gr.File(label="style reference clip (optional)", file_types=["video", "audio", ".npz"],
                                     visible=service.has_style, elem_id="style-from")
                with gr.Accordion("sampling", open=False):
                    steps = gr.Slider(1, 50, value=d["steps"], step=1, label="steps", elem_id="steps")
                    g_ref = gr.Slider(0.0, 5.0, value=d["guidance_ref"], step=0.05, label="reference guidance")
                    g_audio = gr.Slider(0.0, 8.0, value=d["guidance_audio"], step=0.05, label="audio guidance")
                    g_emotion = gr.Slider(0.0, 8.0, value=d["guidance_emotion"], step=0.05, label="emotion guidance")
                    g_style = gr.Slider(0.0, 8.0, value=d["guidance_style"], step=0.05, label="style guidance",
                                        interactive=service.has_style)
                    seed = gr.Number(value=d["seed"], precision=0, minimum=0, label="seed", elem_id="seed")
                    paste_back = gr.Checkbox(value=d["paste_back"], label="paste the face back into the picture",
                                             elem_id="paste-back")
                button = gr.Button("Render", variant="primary", elem_id="render")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="status")
                video = gr.Video(label="video", interactive=False, elem_id="video", autoplay=False)
                download = gr.File(label="download", interactive=False, elem_id="download")
        gr.Markdown(f"renders run {cfg.concurrency} at a time; up to {cfg.queue_size} wait in the queue. "
                    f"Speech up to {cfg.max_seconds:g} s, uploads up to {cfg.max_upload_mb:g} MB.")

        def pick_identity(choice):
            return str(identities[choice]) if choice in identities else None

        def show_face(picture):
            if _path(picture) is None:
                return None, ""
            try:
                p = service.preview(_path(picture))
            except TalkError as e:
                return None, message(str(e), True)
            return enlarged(p.crop), message(p.note)

        def show_mode(choice):
            return (gr.update(visible=choice == "label"), gr.update(visible=choice == "blend"),
                    gr.update(visible=choice == "reference"))

        def render(picture, speech, how, label, strength, ref, sty, sty_from, n_steps, gr_, ga, ge, gs, sd, paste,
                   *blend, progress=gr.Progress()):
            names = [e for e in EMOTIONS if e != "neutral"]
            req = Request(image=_path(picture), audio=_path(speech), emotion_mode=how, emotion=label or "neutral",
                          intensity=float(strength), blend=tuple(zip(names, map(float, blend))),
                          emotion_from=_path(ref), style=sty or NO_STYLE, style_from=_path(sty_from),
                          guidance_ref=gr_, guidance_audio=ga, guidance_emotion=ge, guidance_style=gs,
                          steps=None if n_steps is None else int(n_steps), seed=None if sd is None else int(sd),
                          paste_back=bool(paste))
            progress(0, desc="starting")

            def advance(done: int, total: int) -> None:
                progress((done, total), desc="rendering", unit="frames")

            try:
                result = service.render(req, advance)
            except TalkError as e:
                return None, None, message(str(e), True), gr.update()
            note = (f"{result['frames']} frames ({result['seconds']:.2f} s of video) in {result['wall_s']:.1f} s, "
                    f"{result['fps']:.1f} frames/s")
            return result["out"], result["out"], message(note), gr.update(visible=False)

        identity.change(pick_identity, identity, image, queue=False)
        image.change(show_face, image, [crop, status], concurrency_limit=1, concurrency_id="preview")
        mode.change(show_mode, mode, [emotion, blend_box, emotion_from], queue=False)
        button.click(lambda: message("rendering…"), None, status, queue=False).then(render, [image, audio, mode, emotion, intensity, emotion_from, style, style_from, steps, g_ref,
                              g_audio, g_emotion, g_style, seed, paste_back, *weights],
                     [video, download, status, banner], concurrency_limit=cfg.concurrency, concurrency_id="render")
    return page


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(params, stop: threading.Event | None = None) -> None:
    """Start the page on ``params.serve.host:port`` and serve until Ctrl-C / SIGTERM (or ``stop``);
    the temporary folder of uploads and renders is removed on the way out."""
    from talk.core.runtime import console

    cfg = params.serve
    workdir = Path(tempfile.mkdtemp(prefix="talk-serve-"))
    stop = stop or threading.Event()
    page = None
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        offline_environment(workdir)
        service = Service(params, workdir)
        load_error = service.try_load()
        if load_error:
            console.print(f"[bold yellow]warning:[/] {load_error} (the page says so until the artefacts exist)",
                          highlight=False, soft_wrap=True)
        page = build(service, load_error)
        page.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.concurrency)
        port = cfg.port or free_port(cfg.host)
        sources = Path(params.paths.sources).resolve()
        page.launch(server_name=cfg.host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    ssr_mode=False, mcp_server=False, pwa=False, quiet=True, show_error=False,
                    max_file_size=int(cfg.max_upload_mb * 1024 * 1024), allowed_paths=[str(sources)],
                    theme=theme(), css=CSS, footer_links=[])
        if previous is not None:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        console.print(f"[bold green]talk serve[/] on http://{cfg.host}:{port}/ (renders {cfg.concurrency} at a time, "
                      f"queue {cfg.queue_size}; uploads in {workdir}, removed on exit; Ctrl-C stops)",
                      highlight=False, soft_wrap=True)
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        if page is not None:
            page.close(verbose=False)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
        console.print("talk serve: stopped, temporary files removed", highlight=False)
