"""Five-point face alignment: similarity fits that reproduce each author's solver, and a
batched, cv2-compatible affine warp in torch.

Matrices are float64 ``[2, 3]`` (or ``[N, 2, 3]``) in OpenCV's convention: they map a
frame pixel ``(x, y, 1)`` to a crop pixel, exactly what ``cv2.warpAffine(frame, M, size)``
takes. Pixel coordinates are those of OpenCV (pixel centres at integers).

Solvers:

* :func:`fit_umeyama` — least squares in crop space over rotation+scale+translation
  (no reflection). This is CADDM's ``get_align_transform`` and the same solution as
  scikit-image's ``SimilarityTransform.estimate`` used by DeepfakeBench/StA.
* :func:`fit_cp2tform` — MATLAB ``cp2tform`` as ported in FTCN (used by StyleFlow):
  least squares from crop to frame, then inverted, including the reflective branch and
  its in-place aliasing of the target points, so the choice between the two branches is
  the authors' choice bit for bit. For a moving face the two solvers differ (scale by
  several per cent over a 32-frame clip), so each detector uses its own.

The authors' own crops (:data:`AUTHORS_CROPS`, by template name): how each author turns
dlib's 68 (or 81) landmarks into five keypoints, and the exact arithmetic of their fit and
warp — CADDM's closed-form fit composed as ``M3·M2·M1`` and warped with
``cv2.warpPerspective``; StA's ``skimage`` fit on float32 points onto a float32 template,
warped with ``cv2.warpAffine``. Both reproduce the authors' functions bit for bit on the
same frame and landmarks (``tools/parity/crops.py``, FIDELITY.md); a float64 fit of the same
points moves a few pixels of a crop by up to 8 grey levels (OpenCV quantises coordinates to
1/32 px, so a 1e-7 change in the matrix flips some of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .card import AlignTemplate


def _as_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 2:
        raise ValueError(f"points must be [K >= 2, 2], got {p.shape}")
    return p


def fit_umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Similarity (no reflection) mapping ``src`` [K, 2] onto ``dst`` [K, 2], LS in ``dst``.

    Returns the ``[2, 3]`` float64 matrix for ``cv2.warpAffine``.
    """
    s, d = _as_points(src), _as_points(dst)
    sm, dm = s.mean(0), d.mean(0)
    su, du = s - sm, d - dm
    denom = float((su ** 2).sum())
    if denom <= 0:
        raise ValueError("source points are all identical; no similarity is defined")
    a = float((du[:, 0] * su[:, 0] + du[:, 1] * su[:, 1]).sum()) / denom
    b = float((du[:, 0] * su[:, 1] - du[:, 1] * su[:, 0]).sum()) / denom
    return np.array([[a, b, dm[0] - a * sm[0] - b * sm[1]],
                     [-b, a, dm[1] - a * sm[1] + b * sm[0]]], dtype=np.float64)


def _nonreflective_cp2tform(uv: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """cp2tform's non-reflective solve: LS for ``xy → uv``; returns the 3×3 ``uv → xy``
    matrix in row-vector form (``[x y 1] = [u v 1] @ T``)."""
    m = xy.shape[0]
    x, y = xy[:, :1], xy[:, 1:2]
    ones, zeros = np.ones((m, 1)), np.zeros((m, 1))
    design = np.vstack((np.hstack((x, y, ones, zeros)), np.hstack((y, -x, zeros, ones))))
    rhs = np.vstack((uv[:, :1], uv[:, 1:2]))
    if np.linalg.matrix_rank(design) < 4:
        raise ValueError("cp2tform needs at least two distinct point pairs")
    sc, ss, tx, ty = np.linalg.lstsq(design, rhs, rcond=-1)[0].ravel()
    t_inv = np.array([[sc, -ss, 0.0], [ss, sc, 0.0], [tx, ty, 1.0]])
    t = np.linalg.inv(t_inv)
    t[:, 2] = (0.0, 0.0, 1.0)
    return t


def fit_cp2tform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """FTCN/StyleFlow's reflective ``cp2tform`` fit of ``src`` [K, 2] onto ``dst`` [K, 2].

    Reproduces ``get_similarity_transform_for_cv2(src, dst, reflective=True)``: both
    branches are solved, and — as in the authors' code, where the reflected copy aliases
    the targets — both residuals are measured against the *reflected* targets before the
    smaller one is kept. Returns the ``[2, 3]`` float64 matrix for ``cv2.warpAffine``.
    """
    uv = _as_points(src)
    xy = _as_points(dst).copy()
    t1 = _nonreflective_cp2tform(uv, xy)
    xy_reflected = xy.copy()
    xy_reflected[:, 0] *= -1
    t2 = _nonreflective_cp2tform(uv, xy_reflected) @ np.diag([-1.0, 1.0, 1.0])
    uv1 = np.hstack((uv, np.ones((uv.shape[0], 1))))
    # The authors compare both fits with the reflected targets (their aliasing bug).
    norm1 = np.linalg.norm((uv1 @ t1)[:, :2] - xy_reflected)
    norm2 = np.linalg.norm((uv1 @ t2)[:, :2] - xy_reflected)
    chosen = t1 if norm1 <= norm2 else t2
    return np.ascontiguousarray(chosen[:, :2].T)


_SOLVERS = {"umeyama": fit_umeyama, "cp2tform": fit_cp2tform}


def adapt_keypoints(points: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Move generic 5-point detections towards a detector's own keypoint convention.

    ``points`` is ``[..., 5, 2]`` (image-left eye centre, image-right eye centre, nose tip,
    image-left mouth corner, image-right mouth corner); ``offsets`` ``[5, 2]`` are in
    units of the inter-ocular distance, x along the eye line towards the image right and
    y perpendicular to it, downwards. ``None`` returns the points unchanged.
    """
    p = np.asarray(points, dtype=np.float64)
    if offsets is None:
        return p.copy()
    eye_vec = p[..., 1, :] - p[..., 0, :]
    iod = np.linalg.norm(eye_vec, axis=-1, keepdims=True)
    ux = eye_vec / np.maximum(iod, 1e-9)
    uy = np.stack((-ux[..., 1], ux[..., 0]), axis=-1)
    off = np.asarray(offsets, dtype=np.float64)
    shift = off[:, :1] * ux[..., None, :] + off[:, 1:2] * uy[..., None, :]
    return p + shift * iod[..., None, :]


def fit_template(points: np.ndarray, template: AlignTemplate, size: int | None = None) -> np.ndarray:
    """Fit frame→crop similarity transforms from detected 5-point sets to ``template``.

    ``points``: ``[N, 5, 2]`` frame pixels (generic detector convention; the template's
    ``keypoint_offsets`` are applied first). ``size`` defaults to ``template.size``.

    * ``template.per_clip`` False: one matrix per face, ``[N, 2, 3]``.
    * ``template.per_clip`` True: the ``N`` point sets are the frames of one clip and
      one matrix is fitted to all ``5·N`` points (FTCN/StyleFlow); returns ``[2, 3]``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (5, 2):
        raise ValueError(f"points must be [N, 5, 2], got {pts.shape}")
    offsets = None if template.keypoint_offsets is None else np.asarray(template.keypoint_offsets)
    pts = adapt_keypoints(pts, offsets)
    target = template.points_at(size or template.size)
    solve = _SOLVERS[template.fit]
    if template.per_clip:
        return solve(pts.reshape(-1, 2), np.tile(target, (pts.shape[0], 1)))
    return np.stack([solve(p, target) for p in pts])


def warp_affine(images: torch.Tensor, matrices: torch.Tensor | np.ndarray, size: int,
                boxes: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Batched bilinear affine warp, black border, matching ``cv2.warpAffine``.

    ``images``: uint8 ``[N, H, W, C]`` (one source image per output crop), or ``[1, H, W, C]``:
    one frame shared by all ``N`` crops, sampled in one call without a per-crop copy of the
    frame (the crops' sampling grids are stacked; each output pixel is the same as with a
    per-crop copy). ``matrices``: ``[N, 2, 3]`` frame→crop as for OpenCV. ``boxes``
    (optional) ``[N, 4]`` x1, y1, x2, y2 in frame pixels: pixels outside the box count as
    black (StyleFlow's canvas; a shared frame is then copied per crop). Returns uint8
    ``[N, size, size, C]`` on ``images.device``. OpenCV quantises the interpolation
    weights to 1/32, so results differ from it by at most a few grey levels at edges.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {tuple(images.shape)}")
    n_images, h, w, _ = images.shape
    dev = images.device
    m = torch.as_tensor(np.asarray(matrices) if not isinstance(matrices, torch.Tensor) else matrices,
                        dtype=torch.float64, device=dev).reshape(-1, 2, 3)
    n = m.shape[0]
    if n == 0:
        return torch.zeros(0, size, size, images.shape[3], dtype=torch.uint8, device=dev)
    if n_images != n and n_images != 1:
        raise ValueError(f"{n} matrices for {n_images} images (give one image per matrix, or one shared image)")
    if n_images != n and boxes is not None:
        images = images.expand(n, -1, -1, -1)  # a box per crop: each crop masks its own copy
    shared = images.shape[0] != n
    full = torch.zeros(n, 3, 3, dtype=torch.float64, device=dev)
    full[:, :2] = m
    full[:, 2, 2] = 1.0
    inv = torch.linalg.inv(full)[:, :2]  # crop pixel -> frame pixel
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64, device=dev),
                            torch.arange(size, dtype=torch.float64, device=dev), indexing="ij")
    grid = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1).reshape(1, -1, 3)
    src = grid @ inv.transpose(1, 2)  # [N, size*size, 2] frame pixels
    norm = torch.stack(((2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1), dim=-1)
    x = images.permute(0, 3, 1, 2).float()
    if boxes is not None:
        b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes,
                            dtype=torch.float32, device=dev).reshape(n, 4)
        cols = torch.arange(w, device=dev, dtype=torch.float32)
        rows = torch.arange(h, device=dev, dtype=torch.float32)
        inside_x = (cols[None] >= b[:, :1].floor()) & (cols[None] < b[:, 2:3].ceil())
        inside_y = (rows[None] >= b[:, 1:2].floor()) & (rows[None] < b[:, 3:4].ceil())
        x = x * (inside_y[:, None, :, None] & inside_x[:, None, None, :])
    if shared:
        # One frame, N crops: the N grids stacked along the output's height, so the frame is
        # converted to float once; rows k·size … (k+1)·size − 1 are crop k.
        out = F.grid_sample(x, norm.reshape(1, n * size, size, 2).float(), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        out = out.reshape(x.shape[1], n, size, size).transpose(0, 1)
    else:
        out = F.grid_sample(x, norm.reshape(n, size, size, 2).float(), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------- the authors' crops

# dlib landmark indices (iBUG 68 layout; the 81-point model's first 68 points follow it).
_LEFT_EYE = slice(36, 42)   # image-left eye contour (the subject's right eye)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


def _as_shape(landmarks: np.ndarray) -> np.ndarray:
    shape = np.asarray(landmarks)
    if shape.ndim != 2 or shape.shape[1] != 2 or shape.shape[0] < 68:
        raise ValueError(f"landmarks must be dlib's [68 or 81, 2], got {shape.shape}")
    return shape


def caddm_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """CADDM's five points (``align_5p``): eye-contour means truncated to int, nose tip 30,
    mouth corners 48 and 54. float64 ``[5, 2]``."""
    ld = _as_shape(landmarks)
    left_eye = np.mean(ld[_LEFT_EYE], axis=0).astype(np.int64)   # .astype('int'): truncation
    right_eye = np.mean(ld[_RIGHT_EYE], axis=0).astype(np.int64)
    return np.array([left_eye, right_eye, ld[_NOSE_TIP], ld[_MOUTH_LEFT], ld[_MOUTH_RIGHT]], dtype=np.float64)


def deepfakebench_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """StA's / DeepfakeBench's five points (``get_keypts``): parts 37 and 44 (outer upper
    eyelids), 30 (nose tip), 49 (upper lip by the image-left corner), 55 (lower lip by the
    image-right corner). float64 ``[5, 2]``."""
    ld = _as_shape(landmarks)
    return np.asarray(ld[[37, 44, 30, 49, 55]], dtype=np.float64)


def ftcn_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """FTCN's / StyleFlow's 68-point fallback: eye-contour means (not truncated), nose tip
    30, mouth corners 48 and 54 (its primary source is RetinaFace's five points, which a
    generic detector's eye centres, nose tip and mouth corners stand for). float64 ``[5, 2]``."""
    ld = _as_shape(landmarks).astype(np.float64)
    return np.array([ld[_LEFT_EYE].mean(0), ld[_RIGHT_EYE].mean(0), ld[_NOSE_TIP], ld[_MOUTH_LEFT],
                     ld[_MOUTH_RIGHT]], dtype=np.float64)


def caddm_fit(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """CADDM's ``get_align_transform``: the closed-form least-squares similarity of
    ``points`` onto ``target``, in the authors' order of operations (the same solution as
    :func:`fit_umeyama`, up to the last bits, which decide some of OpenCV's 1/32-px
    coordinate roundings). Returns ``[2, 3]`` float64."""
    lm, mf = _as_points(points), _as_points(target)
    mx, my = mf[:, 0].mean(), mf[:, 1].mean()
    dmx, dmy = lm[:, 0].mean(), lm[:, 1].mean()
    ux, uy = mf[:, 0] - mx, mf[:, 1] - my
    dux, duy = lm[:, 0] - dmx, lm[:, 1] - dmy
    c1 = (ux * dux + uy * duy).sum()
    c2 = (ux * duy - uy * dux).sum()
    c3 = (dux ** 2 + duy ** 2).sum()
    if c3 <= 0:
        raise ValueError("source points are all identical; no similarity is defined")
    a, b = c1 / c3, c2 / c3
    m = np.zeros((2, 3))
    m[0, 0], m[0, 1], m[0, 2] = a, b, mx - a * dmx - b * dmy
    m[1, 0], m[1, 1], m[1, 2] = -b, a, my - a * dmy + b * dmx
    return m


def _stretch(va: np.ndarray, vb: np.ndarray, s: float) -> None:
    """Move two float32 points apart by ``s`` about their midpoint, in place: CADDM's
    shape-jitter step. At test time ``s`` is 1, but the float32 midpoint arithmetic still
    moves the points by an ulp or so, which is why the authors' ``M3`` is not exactly the
    identity (entries of 1e-9 in its perspective row)."""
    m = (va + vb) * 0.5
    d = (va - vb) * 0.5
    va[:] = m + d * s
    vb[:] = m - d * s


@lru_cache(maxsize=8)
def _caddm_test_composition(target_key: tuple[tuple[float, float], ...], size: int) -> np.ndarray:
    """``M3·M2`` of CADDM's test-time ``align_5p`` (rotation 0, stretches 1, shift 0) as
    OpenCV and NumPy compute it: ``cv2.getRotationMatrix2D(centre, 0, 1)``, and the
    perspective map of the template's float32 eye and mouth points onto the same points
    after the (identity) stretches."""
    mf = np.asarray(target_key, dtype=np.float64)[[0, 1, 3, 4]].astype(np.float32)
    mf2 = mf.copy()
    _stretch(mf2[0], mf2[1], 1)
    _stretch(mf2[2], mf2[3], 1.0 / 1)
    _stretch(mf2[0], mf2[2], 1)
    _stretch(mf2[1], mf2[3], 1.0 / 1)
    mf2 += np.array([0, 0])
    m3 = cv2.getPerspectiveTransform(mf, mf2)
    m2 = np.eye(3)
    m2[:2] = cv2.getRotationMatrix2D((size / 2, size / 2), 0, 1)
    return np.asarray(m3.dot(m2), dtype=np.float64)


def caddm_matrix(points: np.ndarray, template: AlignTemplate, size: int) -> np.ndarray:
    """CADDM's composed test-time warp ``M3·M2·M1`` (``[3, 3]`` float64, frame → crop) for
    ``cv2.warpPerspective``."""
    target = template.points_at(size)
    m1 = np.eye(3)
    m1[:2] = caddm_fit(points, target)
    return np.asarray(_caddm_test_composition(tuple(map(tuple, target.tolist())), size).dot(m1))


def deepfakebench_target32(res: int, margin: float = 1.3) -> np.ndarray:
    """DeepfakeBench's ``img_align_crop`` template as the authors compute it: float32
    ArcFace points, x + 8, scaled to ``res``, margin added, shrunk back — each step in
    float32, so the points equal theirs bit for bit (the float64 card template differs by
    up to 1e-5 px)."""
    dst = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                    [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
    dst[:, 0] += 8.0
    dst[:, 0] = dst[:, 0] * res / 112
    dst[:, 1] = dst[:, 1] * res / 112
    pad = res * (margin - 1) / 2.0
    dst[:, 0] += pad
    dst[:, 1] += pad
    dst[:, 0] *= res / (res + 2 * pad)
    dst[:, 1] *= res / (res + 2 * pad)
    return dst


def deepfakebench_matrix(points: np.ndarray, template: AlignTemplate, size: int) -> np.ndarray:
    """StA's fit (``img_align_crop``): scikit-image's ``SimilarityTransform`` estimated from
    float32 points onto the float32 template (scikit-image then solves in float32), as a
    ``[3, 3]`` float64 frame → crop matrix for ``cv2.warpAffine``."""
    from skimage.transform import SimilarityTransform  # imported here: only StA's crop needs it

    src = _as_points(points).astype(np.float32)
    dst = deepfakebench_target32(size)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        params = getattr(tform, "params", None)
    else:
        tform = SimilarityTransform()
        params = tform.params if tform.estimate(src, dst) else None
    if params is None or not np.isfinite(params).all():
        raise ValueError("no similarity fits these points")
    return np.asarray(params, dtype=np.float64)


@dataclass(frozen=True)
class AuthorsCrop:
    """One author's crop: five keypoints from dlib's landmarks, the exact fit, the warp.

    ``keypoints``: dlib ``[68 or 81, 2]`` landmarks → ``[5, 2]`` in the template's order.
    ``matrix``: five points, template, size → ``[3, 3]`` frame → crop, in the authors'
    arithmetic (``None``: the template's own solver, :func:`fit_template`).
    ``perspective``: the authors warp with ``cv2.warpPerspective`` (else ``warpAffine``).
    """

    keypoints: Callable[[np.ndarray], np.ndarray]
    matrix: Callable[[np.ndarray, AlignTemplate, int], np.ndarray] | None = None
    perspective: bool = False


# By template name (models/caddm.py, models/sta.py, models/styleflow.py).
AUTHORS_CROPS: dict[str, AuthorsCrop] = {
    "caddm_mean_face_224": AuthorsCrop(caddm_keypoints, caddm_matrix, perspective=True),
    "deepfakebench_arcface_m1.3": AuthorsCrop(deepfakebench_keypoints, deepfakebench_matrix),
    "ftcn_std_points_256": AuthorsCrop(ftcn_keypoints),
}


def authors_crop(template: AlignTemplate) -> AuthorsCrop:
    """The :class:`AuthorsCrop` of ``template``; ``KeyError`` names the unknown template."""
    try:
        return AUTHORS_CROPS[template.name]
    except KeyError:
        raise KeyError(f"no authors' crop recipe for template {template.name!r}") from None


def frame_matrix(points: np.ndarray, template: AlignTemplate, size: int | None = None) -> np.ndarray:
    """The ``[3, 3]`` frame → crop matrix of one face whose five points are already in the
    authors' convention (their keypoints, or adapted detector points): the authors' exact
    arithmetic where :data:`AUTHORS_CROPS` has it, else the template's solver."""
    s = size or template.size
    recipe = AUTHORS_CROPS.get(template.name)
    full = np.eye(3)
    if recipe is not None and recipe.matrix is not None:
        return recipe.matrix(points, template, s)
    full[:2] = _SOLVERS[template.fit](points, template.points_at(s))
    return full


def warp_crop(image: np.ndarray, matrix: np.ndarray, template: AlignTemplate, size: int | None = None) -> np.ndarray:
    """One crop with OpenCV exactly as the template's authors warp: ``warpPerspective`` for
    CADDM, ``warpAffine`` otherwise; bilinear, black border. ``matrix``: ``[3, 3]`` or ``[2, 3]``."""
    s = size or template.size
    m = np.asarray(matrix, dtype=np.float64)
    recipe = AUTHORS_CROPS.get(template.name)
    if recipe is not None and recipe.perspective:
        full = m if m.shape == (3, 3) else np.vstack([m, [0.0, 0.0, 1.0]])
        return cv2.warpPerspective(image, full, (s, s), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(image, m[:2], (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
