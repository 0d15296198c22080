"""`talk serve`: the checks behind the page (no browser), then the real page in headless Chromium.

The service tests run the web page's own code (talk/web/service.py) on the untrained stand-in
artefacts of render_fixture.py. The browser tests start `talk serve` as a subprocess on those
artefacts and drive Debian's chromium with Playwright; they skip only when no chromium (or no
Playwright) is installed (`make browser` installs chromium).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_fixture import make_artifacts, portrait, speech  # noqa: E402

from talk.cli.main import app  # noqa: E402
from talk.core import params as P  # noqa: E402
from talk.core.errors import TalkError  # noqa: E402
from talk.inference.frames import frame_count  # noqa: E402
from talk.media import io as media  # noqa: E402
from talk.web.service import Request, Service  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "tests" / "fixtures" / "faces" / "face_a.jpg"  # one real face, 256 px
FACE_B = ROOT / "tests" / "fixtures" / "faces" / "face_b.jpg"
SPEECH = ROOT / "tests" / "fixtures" / "speech_radio_3s2.wav"  # 3.2 s of real speech
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def write_params(path: Path, arts: dict, **serve) -> Path:
    data = {
        "base": {"threads": 1},
        "render": {"sampling": {"steps": 2}},
        "paths": {"vae": str(arts["vae"]), "prior": str(arts["prior"]), "finetune_disc": str(arts["denoiser"]),
                  "cache": str(path.parent / "cache"), "sources": str(ROOT / "data" / "sources")},
        "serve": serve,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    torch.set_num_threads(1)
    return make_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import cv2

    d = tmp_path_factory.mktemp("inputs")
    cv2.imwrite(str(d / "no_face.png"), cv2.cvtColor(portrait(128), cv2.COLOR_RGB2BGR))
    a, b = cv2.imread(str(FACE)), cv2.resize(cv2.imread(str(FACE_B)), (256, 256))
    cv2.imwrite(str(d / "two_faces.jpg"), np.concatenate([a, b], axis=1))
    media.write_wav(d / "long.wav", speech(2.5))
    (d / "not_audio.wav").write_text("this is not audio\n")
    return d


@pytest.fixture(scope="module")
def service(arts, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    params = P.load(write_params(d / "p.yaml", arts, max_seconds=2.0))
    return Service(params, d / "work")


# --------------------------------------------------------------------------------------------
# The service behind the page


def test_speech_over_the_limit_is_one_line(service):
    with pytest.raises(TalkError, match=r"at most 2 s \(serve.max_seconds\)"):
        service.check(Request(image=FACE, audio=SPEECH))


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory):
    p = tmp_path_factory.mktemp("speech") / "short.wav"
    samples = media.read_audio(SPEECH)[: int(1.3 * media.AUDIO_RATE)]
    media.write_wav(p, samples)
    return p


def test_service_render_frames_audio_and_progress(service, short_speech):
    ticks = []
    result = service.render(Request(image=FACE, audio=short_speech, emotion="sad", intensity=0.5, steps=2, seed=3),
                            advance=lambda d, t: ticks.append((d, t)))
    n = frame_count(len(media.read_audio(short_speech)))
    info = media.probe(result["out"])
    assert result["frames"] == n and info.n_frames == n and info.has_audio
    assert Path(result["out"]).parent == service.renders and "talk-sad-" in Path(result["out"]).name
    assert ticks[-1] == (n, n) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)


@pytest.mark.parametrize("change, message", [
    ({"emotion": "joyful"}, "unknown emotion 'joyful'"),
    ({"emotion_mode": "blend", "blend": (("happy", 0.0), ("sad", 0.0))}, "a blend needs a weight above 0"),
    ({"emotion_mode": "blend", "blend": (("happy", 0.5), ("glee", 0.5))}, "unknown emotion 'glee'"),
    ({"emotion_mode": "reference"}, "upload the clip"),
    ({"style": "style/NOBODY"}, "unknown style 'style/NOBODY'"),
    ({"intensity": 1.5}, r"intensity must be in \[0, 1\]"),
    ({"image": None}, "no portrait"),
    ({"audio": None}, "no speech"),
])
def test_user_errors_are_one_line(service, short_speech, change, message):
    req = Request(**{"image": FACE, "audio": short_speech, **change})
    with pytest.raises(TalkError, match=message):
        service.render(req)


def test_unreadable_audio_names_the_file_not_the_upload_folder(service, inputs):
    with pytest.raises(TalkError) as e:
        service.render(Request(image=FACE, audio=inputs / "not_audio.wav"))
    assert str(e.value).startswith("not_audio.wav: not a readable media file"), e.value
    assert str(inputs) not in str(e.value)


def test_blend_is_normalised_above_one(service, short_speech):
    job = service.check(Request(image=FACE, audio=short_speech, emotion_mode="blend",
                                blend=(("happy", 1.0), ("surprised", 1.0), ("sad", 0.0))))
    assert job["blend"] == [("happy", 0.5), ("surprised", 0.5)]


def test_preview_shows_the_crop_no_face_and_several_faces(service, inputs):
    one = service.preview(FACE)
    size = service.pipeline().image_size
    assert one.crop.shape == (size, size, 3) and one.faces == 1
    with pytest.raises(TalkError, match="^no face found in the image$"):
        service.preview(inputs / "no_face.png")
    two = service.preview(inputs / "two_faces.jpg")
    assert two.faces == 2 and "the largest is used" in two.note


def test_missing_artefacts_are_a_message_and_retried(arts, tmp_path):
    params = P.load(write_params(tmp_path / "p.yaml", {**arts, "denoiser": tmp_path / "nothing"}))
    svc = Service(params, tmp_path / "work")
    reason = svc.try_load()
    assert reason and "denoiser not found" in reason and "talk finetune-disc" in reason
    assert svc.defaults()["steps"] == 2  # the page still opens, with params.yaml's values
    with pytest.raises(TalkError, match="denoiser not found"):
        svc.render(Request(image=FACE, audio=SPEECH))


def test_sample_identities_come_from_the_sources_manifest(service):
    ids = service.identities()
    assert ids and all(p.is_file() for p in ids.values())
    from talk.synthesis.sources import read_sources

    portraits = {src.speaker for src in read_sources(service.params.paths.sources) if src.kind == "portrait"}
    assert {label.split()[0] for label in ids} == (set(service.params.sample_data.identities) or portraits)


def test_cli_dry_run_and_overrides(runner, arts, tmp_path):
    p = write_params(tmp_path / "p.yaml", arts)
    result = runner.invoke(app, ["serve", "--params", str(p), "--port", "8123", "--set", "serve.concurrency=2",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    section = yaml.safe_load(result.output)["serve"]
    assert section["host"] == "127.0.0.1" and section["port"] == 8123 and section["concurrency"] == 2
    bad = runner.invoke(app, ["serve", "--params", str(p), "--set", "serve.prot=1", "--dry-run"])
    assert bad.exit_code == 2 and "did you mean 'port'" in bad.output


# --------------------------------------------------------------------------------------------
# The server and the page in headless Chromium


def outward_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, params: Path, tmp: Path):
        self.port, self.tmp = free_port(), tmp
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp.parent / "server.log"
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "talk.cli.main", "serve", "--params", str(params), "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"talk serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"talk serve did not answer within 240 s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(arts, tmp_path_factory):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("no Gradio: pip install -e '.[web]' (make install does)")
    d = tmp_path_factory.mktemp("server")
    (d / "tmp").mkdir()
    s = Server(write_params(d / "p.yaml", arts), d / "tmp")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium (make browser, or apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
        yield b
        b.close()


def open_page(browser, server, outside: list[str] | None = None, *, load_timeout_ms: int = 60_000):
    """A fresh page on the server; every request to another host is refused (and recorded)."""
    from urllib.parse import urlparse

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def route(r):
        if urlparse(r.request.url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            if outside is not None:
                outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(server.url, timeout=load_timeout_ms)
    page.wait_for_selector("#render", timeout=load_timeout_ms)
    return page


def upload(page, element: str, path: Path) -> None:
    page.set_input_files(f"#{element} input[type=file]", str(path))


def choose(page, element: str, option: str) -> None:
    page.click(f"#{element} input")
    page.get_by_role("option", name=option, exact=True).click()


MESSAGE = "#status [data-testid=markdown]"  # the status box's one line (not its progress overlay)


def status(page) -> str:
    return page.inner_text(MESSAGE).strip()


def wait_status(page, text: str, timeout_ms: int = 120_000) -> str:
    page.wait_for_function("([sel, t]) => (document.querySelector(sel)?.innerText || '').includes(t)",
                           arg=[MESSAGE, text], timeout=timeout_ms)
    return status(page)


def watch_status(page) -> None:
    """Record every text the status line takes from now on (window.__seen)."""
    page.evaluate("""sel => { window.__seen = []; const box = document.querySelector('#status');
        new MutationObserver(() => { const m = document.querySelector(sel); if (m) window.__seen.push(m.innerText.trim()); })
            .observe(box, {subtree: true, childList: true, characterData: true}); }""", MESSAGE)


def wait_seen(page, first: str, then: str, timeout_ms: int = 120_000) -> None:
    """Wait until the status line showed ``first`` and, after it, ``then``."""
    page.wait_for_function("""([a, b]) => { const s = window.__seen, i = s.findIndex(t => t.includes(a));
        return i >= 0 && s.slice(i + 1).some(t => t.includes(b)); }""", arg=[first, then], timeout=timeout_ms)


def fetch_video(page, dest: Path) -> Path:
    src = page.get_attribute("#video video", "src")
    assert src and src.startswith("http://127.0.0.1:"), src
    dest.write_bytes(page.request.get(src).body())
    return dest


@pytest.mark.slow
def test_page_renders_the_video_with_its_audio(server, browser, tmp_path):
    page = open_page(browser, server)
    upload(page, "portrait", FACE)
    wait_status(page, "one face found")
    assert page.locator("#crop img").count() == 1  # the face the model sees, before rendering
    upload(page, "speech", SPEECH)
    page.wait_for_selector("#speech audio, #speech .waveform-container, #speech wave", state="attached", timeout=30_000)
    choose(page, "emotion", "sad")
    page.evaluate("""() => { window.__bars = []; new MutationObserver(() => {
        const m = document.body.innerText.match(/rendering\\D*(\\d+)\\s*\\/\\s*(\\d+)\\s*frames/);
        if (m) window.__bars.push([+m[1], +m[2]]); }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
    page.click("#render")
    text = wait_status(page, "frames/s")
    page.wait_for_selector("#video video", timeout=60_000)
    n = frame_count(len(media.read_audio(SPEECH)))
    assert text.startswith(f"{n} frames"), text
    bars = page.evaluate("() => window.__bars")  # the progress bar: frames done / total while rendering
    assert bars and all(total == n and 0 <= done <= n for done, total in bars), bars
    # it plays in the browser: metadata loaded, the clip's length
    duration = page.eval_on_selector("#video video", """v => new Promise(ok => {
        if (v.readyState >= 1) ok(v.duration); else v.addEventListener('loadedmetadata', () => ok(v.duration)); })""")
    assert abs(duration - n / 25) < 0.1, duration
    video = fetch_video(page, tmp_path / "page.mp4")
    info = media.probe(video)
    assert info.n_frames == n and info.has_audio and info.audio_channels >= 1
    assert len(media.read_video(video)) == n
    assert "talk-sad-" in page.get_attribute("#video video", "src")
    assert page.locator("#download a").count() >= 1  # the download link
    page.screenshot(path=str(tmp_path / "rendered.png"), full_page=True)
    assert (tmp_path / "rendered.png").stat().st_size > 10_000
    page.context.close()


@pytest.mark.slow
def test_page_shows_no_face_as_one_message_and_keeps_serving(server, browser, inputs, tmp_path):
    page = open_page(browser, server)
    upload(page, "portrait", inputs / "no_face.png")
    first = wait_status(page, "error:")
    assert first.startswith("error: ") and "no face found in the image" in first and "\n" not in first
    upload(page, "speech", SPEECH)
    page.wait_for_timeout(500)
    watch_status(page)
    page.click("#render")
    wait_seen(page, "rendering", "error:")  # the render's own answer, not the preview's
    assert status(page).startswith("error: no_face.png: no face found in the image")
    assert page.locator("#video video").count() == 0
    page.screenshot(path=str(tmp_path / "no_face.png"), full_page=True)
    upload(page, "portrait", FACE)  # the same page and server go on
    wait_status(page, "one face found")
    page.context.close()


@pytest.mark.slow
def test_page_loads_with_every_outside_host_refused(server, browser):
    outside: list[str] = []
    page = open_page(browser, server, outside)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.reload()
    page.wait_for_selector("#render")
    page.wait_for_load_state("networkidle")
    assert outside == [], outside  # nothing the page asks for lives outside
    assert requests and all(u.startswith(("http://127.0.0.1:", "data:", "blob:")) for u in requests), requests
    assert page.locator("#portrait").is_visible() and page.locator("#render").is_enabled()
    fonts = page.evaluate("() => [...document.fonts].filter(f => f.status === 'error').map(f => f.family)")
    assert fonts == [], fonts
    page.context.close()


@pytest.mark.slow
def test_two_renders_started_at_once_both_finish(server, browser, tmp_path):
    pages = [open_page(browser, server) for _ in range(2)]
    for page, emotion in zip(pages, ("happy", "angry")):
        upload(page, "portrait", FACE)
        upload(page, "speech", SPEECH)
        choose(page, "emotion", emotion)
        wait_status(page, "one face found")
    for page in pages:
        page.click("#render")
    n = frame_count(len(media.read_audio(SPEECH)))
    for i, page in enumerate(pages):
        assert wait_status(page, "frames/s").startswith(f"{n} frames")
        page.wait_for_selector("#video video", timeout=60_000)
        assert media.probe(fetch_video(page, tmp_path / f"{i}.mp4")).n_frames == n
        page.context.close()


@pytest.mark.slow
def test_server_binds_localhost_and_removes_its_files_on_exit(server):
    folders = list(server.tmp.glob("talk-serve-*"))
    assert len(folders) == 1, folders  # uploads and renders: one temporary folder
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    other = outward_address()
    if other is not None:  # the machine's own address on its network: not bound there
        with pytest.raises(OSError):
            socket.create_connection((other, server.port), timeout=5).close()
    assert server.stop() == 0, server.log.read_text()
    assert not folders[0].exists() and "temporary files removed" in server.log.read_text()
