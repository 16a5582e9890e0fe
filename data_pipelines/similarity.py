"""The five-point similarity transform to the ArcFace template, in pure NumPy.

A face recognizer trained on insightface crops (ArcFace, SFace) expects the eyes, nose tip and
mouth corners of every face at the same five points of a 112x112 image (`ARCFACE_112`,
insightface's `arcface_dst`). The transform that takes a face's five landmarks there is the
least-squares similarity (scale, rotation, shift; Umeyama 1991), as insightface's `norm_crop`
estimates it with scikit-image's `SimilarityTransform`. Matrices are [2, 3],
`dst = M[:, :2] @ src + M[:, 2]`, the form `cv2.warpAffine` takes.

Points are (x, y) in pixels, x to the right, y down. Shape legend: P points.
"""

import numpy as np

# insightface `arcface_dst`: the five landmarks of the 112x112 ArcFace crop (left eye, right eye,
# nose tip, left and right mouth corners, as seen in the image).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float64,
)


def arcface_template(size: int = 112) -> np.ndarray:
    """The five ArcFace landmarks for a `size` x `size` crop, as insightface's `estimate_norm`.

    A multiple of 128 that is not a multiple of 112 gets insightface's 128 variant (the 112
    template scaled by size/128 and shifted right by 8 * size/128, a wider margin); every other
    size gets the 112 template scaled by size/112 (insightface allows only multiples of 112 there).

    Returns:
      float64 [5, 2] (x, y) points.

    Raises:
      ValueError: `size` is not a positive int.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int (the crop side in pixels), got {size!r}")
    if size % 128 == 0 and size % 112 != 0:
        ratio = size / 128.0
        return ARCFACE_112 * ratio + np.array([8.0 * ratio, 0.0])
    return ARCFACE_112 * (size / 112.0)


def _check_points(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise ValueError(f"{name} must be [P, 2] (x, y) points with P >= 2, got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} holds non-finite coordinates: {points.tolist()}")
    return points


def estimate_similarity(src_Px2: np.ndarray, dst_Px2: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping `src` onto `dst`, without reflection.

    Minimises sum_i ||s R src_i + t - dst_i||^2 over scale s > 0, rotation R and shift t, the
    estimate of skimage's `SimilarityTransform` that insightface's `norm_crop` uses. Points that
    are an exact similarity of each other are mapped exactly.

    Args:
      src_Px2: [P, 2] source points (a face's landmarks in the photo).
      dst_Px2: [P, 2] target points (the template), same order.

    Returns:
      float64 [2, 3] affine matrix `M`, dst ~= M[:, :2] @ src + M[:, 2] (cv2.warpAffine's form).

    Raises:
      ValueError: shapes differ or are not [P, 2] with P >= 2, a coordinate is not finite, or the
        source points all coincide (no scale or rotation can be estimated).
    """
    src = _check_points(src_Px2, "src_Px2")
    dst = _check_points(dst_Px2, "dst_Px2")
    if src.shape != dst.shape:
        raise ValueError(f"src_Px2 {src.shape} and dst_Px2 {dst.shape} must have the same shape")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = np.sum(src_c**2) / len(src)
    # Relative to the points' magnitude: coincident points leave only rounding noise.
    if src_var <= 1e-12 * max(1.0, float(np.sum(src_mean**2))):
        raise ValueError(f"src_Px2 points all coincide, no similarity is defined: {src.tolist()}")
    cov_2x2 = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov_2x2)
    # Flip the last axis when the best orthogonal map would be a reflection (Umeyama's S).
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ np.diag(d) @ vt
    scale = float(sing @ d) / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def apply_affine(matrix_2x3: np.ndarray, points_Px2: np.ndarray) -> np.ndarray:
    """Maps [P, 2] points with a [2, 3] affine matrix; returns float64 [P, 2]."""
    points = np.asarray(points_Px2, dtype=np.float64)
    return points @ np.asarray(matrix_2x3)[:, :2].T + np.asarray(matrix_2x3)[:, 2]


def decompose_similarity(matrix_2x3: np.ndarray) -> dict[str, float]:
    """Scale s, angle a (degrees) and shift (tx, ty) of a similarity matrix
    [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]. With y pointing down, a positive angle
    turns points clockwise on screen."""
    m = np.asarray(matrix_2x3, dtype=np.float64)
    return {
        "scale": float(np.hypot(m[0, 0], m[1, 0])),
        "rotation_deg": float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))),
        "shift_x": float(m[0, 2]),
        "shift_y": float(m[1, 2]),
    }


def alignment_matrix(landmarks_5x2: np.ndarray, *, size: int = 112) -> np.ndarray:
    """The [2, 3] matrix that takes a face's five landmarks onto the `size` ArcFace template."""
    landmarks = np.asarray(landmarks_5x2, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be [5, 2] (x, y) points, got {landmarks.shape}")
    return estimate_similarity(landmarks, arcface_template(size))
