"""Benchmark: `talk serve` — page load time, a render through the page vs the same render without
it, and the server's peak RSS.

Models of the default profile's sizes (params.yaml ``model``): the trained artefacts with
``--artifacts DIR``, else untrained stand-ins built from the real classes (speed does not depend on
the weights), as benchmarks/render.py. Input: the demo portrait (detected and cropped) and the demo
speech cut to ``--seconds``. All in one run, same threads, one render at a time:

- ``talk serve`` started as a subprocess: seconds until the page answers (imports + pipeline load);
- page load in headless chromium (Debian's, Playwright), every outside host refused: the first load
  and the best of ``--repeat`` more, to the render button being visible;
- a render through the page: click to the video shown (the portrait and speech uploaded before);
- baselines for the same input and settings: ``TalkPipeline.render_to_file`` in a process set up as
  the server is (the call the page makes, model loaded once, in a worker thread as the server runs
  it, and again in the main thread; page and baseline take turns), and a
  whole `talk render` command (process start, model load, render, file): the ratios page / baseline;
- peak RSS of the server process (VmHWM) after everything, and of this process.

    .venv/bin/python benchmarks/serve.py [--threads 2] [--seconds 4] [--repeat 3] [--artifacts DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def vm_kb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stand_ins(params, folder: Path) -> dict[str, Path]:
    from render_fixture import default_profile, write_denoiser, write_prior, write_vae

    from talk.core import params as P
    from talk.inference.settings import SamplingConfig

    s = default_profile(params)
    af = params.audio_features
    sampling = SamplingConfig().override(P.to_plain(params.train_diffusion).get("sampling") or {}, "train_diffusion.sampling")
    return {"vae": write_vae(folder / "vae", s), "prior": write_prior(folder / "prior", s),
            "finetune_disc": write_denoiser(folder / "finetune_disc", s, {"whisper": af.whisper, **af.chunking}, sampling,
                                            params.crop_align.face)}


def call_worker(pfile: str, image: str, speech: str) -> None:
    """The baseline process: set up as `talk serve` is (runtime.setup, one pipeline), then one
    ``render_to_file`` per line read from stdin, its wall seconds printed per line."""
    from talk.core import params as P
    from talk.core import runtime
    from talk.inference.pipeline import TalkPipeline

    params = P.load(pfile)
    runtime.setup(params.base)
    pipe = TalkPipeline.from_params(params)
    out = Path(pfile).parent / "call.mp4"
    print("ready", flush=True)

    def once() -> float:
        t = time.perf_counter()
        pipe.render_to_file(out, image, speech, emotion=params.serve.emotion, show_progress=False)
        return time.perf_counter() - t

    for _ in sys.stdin:  # in a worker thread, as the server's renders run; then in the main thread
        box: list[float] = []
        worker = threading.Thread(target=lambda: box.append(once()))
        worker.start()
        worker.join()
        print(f"{box[0]:.4f} {once():.4f}", flush=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--call-worker":
        return call_worker(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="s of speech rendered")
    ap.add_argument("--repeat", type=int, default=3, help="warm page loads / renders timed (best)")
    ap.add_argument("--artifacts", type=Path, default=None, help="trained artefacts folder (default: stand-ins)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not Path(args.chromium).exists():
        sys.exit(f"no chromium at {args.chromium}: make browser (or apt-get install -y chromium)")

    import torch
    import yaml
    from playwright.sync_api import sync_playwright
    from rich.console import Console
    from rich.table import Table

    from talk.core import params as P
    from talk.inference import frames
    from talk.media import io as media

    torch.set_num_threads(args.threads)
    console = Console(width=140)
    tmp = Path(tempfile.mkdtemp(prefix="talk-serve-bench-"))
    params = P.load(args.params)
    if args.artifacts is not None:
        root = args.artifacts
        den = "finetune_disc" if (root / "finetune_disc").is_dir() else "diffusion"
        arts, what = {"vae": root / "vae", "prior": root / "prior", den: root / den}, f"trained artefacts in {root}"
    else:
        den, arts, what = "finetune_disc", stand_ins(params, tmp), "untrained stand-ins of the default profile's sizes"
    sets = {"render": {"denoiser": den}, "base": {"threads": args.threads},
            "paths": {k: str(Path(v).resolve()) for k, v in arts.items()}, "serve": {"port": free_port()}}
    raw = yaml.safe_load(args.params.read_text())
    for section, keys in sets.items():
        raw.setdefault(section, {}).update(keys)
    raw["paths"]["sources"] = str((ROOT / raw["paths"].get("sources", "data/sources")).resolve())
    pfile = tmp / "params.yaml"
    pfile.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = P.load(pfile)
    cfg = params.render
    image = params.paths.sources / cfg.demo_image
    speech = tmp / "speech.wav"
    media.write_wav(speech, frames.load_speech(params.paths.sources / cfg.demo_audio)[: int(args.seconds * media.AUDIO_RATE)])
    n = frames.frame_count(len(media.read_audio(speech)))
    console.print(f"[bold]serve benchmark[/]: {what}; {args.threads} threads; {n} frames ({n / 25:.2f} s of speech)")

    # -- the server
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TMPDIR": str(tmp)}
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "talk.cli.main", "serve", "--params", str(pfile)], cwd=ROOT, env=env,
                              stdout=(tmp / "server.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{params.serve.port}/"
    while True:
        if server.poll() is not None:
            sys.exit(f"talk serve exited:\n{(tmp / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    t_start = time.perf_counter() - t0
    console.print(f"server answered after {t_start:.2f} s")
    rss_ready = vm_kb(server.pid, "VmRSS") / 1024
    outside: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                         args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])

            def new_page():
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1")
                           else (outside.append(r.request.url), r.abort()))
                return page

            def load(page) -> float:
                t = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("#render", state="visible")
                return time.perf_counter() - t

            page = new_page()
            t_first_load = load(page)
            t_load = min(load(page) for _ in range(args.repeat))
            console.print(f"page load: first {t_first_load:.2f} s, best {t_load:.2f} s")
            page.set_input_files("#portrait input[type=file]", str(image))
            page.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('face')", timeout=120_000)
            page.set_input_files("#speech input[type=file]", str(speech))
            page.wait_for_timeout(1000)

            def render_page() -> float:
                page.evaluate("() => { window.__done = window.__saw = false; const box = document.querySelector('#status');"
                              " new MutationObserver(() => { const t = box.innerText;"
                              " if (t.includes('rendering')) window.__saw = true;"
                              " else if (window.__saw && t.includes('frames/s')) window.__done = true; })"
                              ".observe(box, {subtree: true, childList: true, characterData: true}); }")
                t = time.perf_counter()
                page.click("#render")
                page.wait_for_function("() => window.__done", timeout=600_000)
                page.wait_for_selector("#video video", timeout=60_000)
                return time.perf_counter() - t

            # the page and the baseline process, turn about (the same load on both)
            worker = subprocess.Popen([sys.executable, __file__, "--call-worker", str(pfile), str(image), str(speech)],
                                      cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert worker.stdout.readline().strip() == "ready"

            def render_call() -> float:
                worker.stdin.write("go\n")
                worker.stdin.flush()
                return tuple(map(float, worker.stdout.readline().split()))

            t_page_first, (t_call_first, _) = render_page(), render_call()
            runs = [(render_page(), *render_call()) for _ in range(args.repeat)]
            worker.stdin.close()
            worker.wait(60)
            t_page, t_call, t_main = (min(r[i] for r in runs) for i in range(3))
            console.print(f"render through the page: first {t_page_first:.2f} s, best {t_page:.2f} s; "
                          f"render_to_file: first {t_call_first:.2f} s, best {t_call:.2f} s (main thread {t_main:.2f} s)")
            text = page.inner_text("#status [data-testid=markdown]")
            assert text.startswith(f"{n} frames"), text
            browser.close()
        rss_server = vm_kb(server.pid, "VmHWM") / 1024
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    # -- the other baseline: a whole `talk render` (process start, model load, render, file)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "talk.cli.main", "render", "--params", str(pfile), "--image", str(image),
                    "--audio", str(speech), "--emotion", params.serve.emotion, "--out", str(tmp / "cli.mp4")],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    t_cli = time.perf_counter() - t0
    assert media.probe(tmp / "cli.mp4").n_frames == n
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    table = Table(title=f"talk serve, {args.threads} threads, {n} frames")
    for col in ("what", "seconds", "x baseline", "note"):
        table.add_column(col, justify="left" if col in ("what", "note") else "right")
    table.add_row("server start to first answer", f"{t_start:.2f}", "-", "imports + pipeline load")
    table.add_row("page load, first", f"{t_first_load:.2f}", "-", "to the render button, outside hosts refused")
    table.add_row(f"page load, best of {args.repeat}", f"{t_load:.2f}", "-", "")
    table.add_row("render through the page, first", f"{t_page_first:.2f}", f"{t_page_first / t_call_first:.2f}", "click -> video shown")
    table.add_row(f"render through the page, best of {args.repeat}", f"{t_page:.2f}", f"{t_page / t_call:.2f}", "vs the pipeline call")
    table.add_row("baseline: render_to_file, first", f"{t_call_first:.2f}", "1.00", "a process set up as the server, turn about")
    table.add_row(f"baseline: render_to_file, best of {args.repeat}", f"{t_call:.2f}", "1.00", "(the page's call, model loaded)")
    table.add_row("render_to_file in the main thread", f"{t_main:.2f}", f"{t_main / t_call:.2f}", "x column: / the thread's")
    table.add_row("baseline: `talk render` command", f"{t_cli:.2f}", f"{t_page / t_cli:.2f}",
                  "x column: page render / this; includes start + load")
    console.print(table)
    console.print(f"page / pipeline call: {t_page / t_call:.2f}x; page / `talk render`: {t_page / t_cli:.2f}x; "
                  f"outside requests: {len(outside)}; server RSS at ready {rss_ready:.0f} MB, peak {rss_server:.0f} MB; "
                  f"this process peak {rss_self:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({
            "threads": args.threads, "artefacts": what, "frames": n, "server_start_s": t_start,
            "page_load_first_s": t_first_load, "page_load_s": t_load, "render_page_first_s": t_page_first,
            "render_page_s": t_page, "render_call_first_s": t_call_first, "render_call_s": t_call, "render_call_main_thread_s": t_main, "talk_render_s": t_cli,
            "page_over_call": t_page / t_call, "page_over_talk_render": t_page / t_cli, "outside_requests": outside,
            "server_rss_ready_mb": rss_ready, "server_peak_rss_mb": rss_server, "bench_peak_rss_mb": rss_self,
        }, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
