"""Procedurally rendered synthetic face identities: the embedded default dataset.

Every identity is a fixed set of geometric and colour parameters drawn from
`np.random.default_rng([seed, global_id, ...])`: face outline and jaw, eye spacing, size, height
and iris colour, eyebrows, nose, mouth, ears, hair style (one of eight) and hairline, and
optional beard, glasses, moles and blush. Every image adds nuisance drawn from
`(seed, global_id, image_number)`: pose (roll, yaw, translation, scale), lighting (brightness,
gradient, colour cast, face shading), expression, background, clothing and pixel noise, plus a
recorded degradation level in [0, 1] (blur, noise, low light, contrast loss, occlusion) that
serves as ground-truth image quality.

Rendering is vectorised NumPy on coordinate grids: each part is a signed distance in the face's
own frame (x right, y down, the image spans [-1, 1] at scale 1), turned into anti-aliased coverage
and blended inside the part's bounding window only. Nothing is read from disk or downloaded.
"""

import dataclasses
import functools
import math

import numpy as np

# Hair styles; identity lives in the style as much as in the colour.
BALD, CROP, FRINGE, SIDE_PART, LONG, CURLY, SPIKY, BUN = range(8)
NUM_HAIR_STYLES = 8
_MIN_SIZE = 32
_SKIN_LIGHT = np.array([0.96, 0.82, 0.70], np.float32)
_SKIN_DARK = np.array([0.36, 0.22, 0.14], np.float32)
_HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.55, 0.36, 0.17], [0.85, 0.70, 0.40],
     [0.62, 0.24, 0.08], [0.62, 0.62, 0.62], [0.92, 0.92, 0.90]], np.float32)  # fmt: skip
_IRIS_COLOURS = np.array(
    [[0.35, 0.20, 0.08], [0.20, 0.45, 0.75], [0.25, 0.55, 0.30], [0.45, 0.45, 0.50],
     [0.55, 0.45, 0.15]], np.float32)  # fmt: skip


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def identity_params(global_id: int, *, seed: int = 0) -> dict:
    """The stable parameters of one synthetic person.

    Args:
      global_id: the person's global identity id, >= 0.
      seed: dataset seed, >= 0; the same (seed, global_id) always gives the same person.

    Returns:
      A dict of Python floats/ints and small float32 arrays (colours, mole positions), lengths in
      face units (the image spans [-1, 1] at scale 1).
    """
    rng = np.random.default_rng([seed, global_id, 0x1D])
    p = {}
    p["head_a"] = _uniform(rng, 0.36, 0.54)  # half width
    p["head_b"] = _uniform(rng, 0.48, 0.68)  # half height
    p["head_cy"] = _uniform(rng, -0.06, 0.06)
    p["jaw_taper"] = _uniform(rng, 0.0, 0.55)  # 0 round chin, high pointed chin
    p["jaw_square"] = _uniform(rng, 0.0, 0.35)  # widens the lower cheeks
    p["skin"] = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * rng.uniform()
    p["skin"] = np.clip(p["skin"] * rng.uniform(0.93, 1.07, 3), 0, 1).astype(np.float32)
    b = p["head_b"]
    p["eye_y"] = p["head_cy"] + b * _uniform(rng, -0.22, 0.05)
    p["eye_dx"] = p["head_a"] * _uniform(rng, 0.28, 0.52)
    p["eye_w"] = _uniform(rng, 0.06, 0.125)
    p["eye_h"] = p["eye_w"] * _uniform(rng, 0.40, 0.75)
    p["iris_r"] = p["eye_h"] * _uniform(rng, 0.65, 0.95)
    p["iris"] = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2, 3)
    p["brow_dy"] = _uniform(rng, 0.055, 0.13)
    p["brow_t"] = _uniform(rng, 0.010, 0.045)  # half thickness
    p["brow_angle"] = _uniform(rng, -0.40, 0.35)  # radians, positive = inner end down
    p["brow_len"] = p["eye_w"] * _uniform(rng, 0.9, 1.5)
    p["nose_len"] = _uniform(rng, 0.10, 0.28)
    p["nose_w"] = _uniform(rng, 0.035, 0.09)
    p["mouth_dy"] = _uniform(rng, 0.07, 0.15)  # below the nose tip
    p["mouth_w"] = _uniform(rng, 0.08, 0.20)
    p["lip_t"] = _uniform(rng, 0.015, 0.04)
    lip = np.array([0.75, 0.30, 0.30], np.float32) * rng.uniform(0.7, 1.1)
    p["lip"] = (0.6 * lip + 0.4 * p["skin"]).astype(np.float32)
    p["ear_r"] = _uniform(rng, 0.06, 0.11)
    p["ear_dy"] = _uniform(rng, -0.04, 0.08)
    p["hair_style"] = int(rng.integers(NUM_HAIR_STYLES))
    p["hair"] = np.clip(
        _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.2, 3), 0, 1
    ).astype(np.float32)
    p["hairline"] = _uniform(rng, 0.25, 0.6)  # fraction of head_b above the centre
    p["hair_volume"] = _uniform(rng, 0.03, 0.16)
    p["part_side"] = float(rng.choice([-1.0, 1.0]))
    # Beard: 0 none, 1 moustache, 2 full beard, 3 goatee.
    p["beard"] = int(rng.choice(4, p=[0.5, 0.15, 0.2, 0.15]))
    # Glasses: 0 none, 1 round, 2 square.
    p["glasses"] = int(rng.choice(3, p=[0.6, 0.2, 0.2]))
    p["frame"] = rng.uniform(0.0, 0.6, 3).astype(np.float32)
    num_moles = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    p["moles"] = np.stack(
        [rng.uniform(-0.7, 0.7, num_moles), rng.uniform(-0.1, 0.7, num_moles)], axis=1
    ).astype(np.float32)  # in head-relative units
    p["blush"] = float(rng.uniform(0.25, 0.6)) if rng.uniform() < 0.3 else 0.0  # rosy cheeks
    return p


class _Draws:
    """Uniform draws handed out in order: one generator call per image costs a third of ~30."""

    def __init__(self, rng: np.random.Generator):
        self.values = rng.random(64).tolist()
        self.next = 0

    def __call__(self, low: float = 0.0, high: float = 1.0, k: int = 0):
        """One float in [low, high), or float32 [k] when k > 0."""
        take = self.values[self.next : self.next + max(k, 1)]
        self.next += len(take)
        if k == 0:
            return low + (high - low) * take[0]
        return np.array([low + (high - low) * v for v in take], np.float32)


def nuisance_params(
    global_id: int, image_number: int, *, seed: int = 0, degradation: float | None = None
) -> dict:
    """Per-image nuisance and degradation of one rendering of a person.

    Args:
      global_id: the person's global identity id, >= 0.
      image_number: which image of that person, >= 0.
      seed: dataset seed, >= 0.
      degradation: if given, replaces the drawn degradation level (in [0, 1]) and leaves every
        other draw as it was: the same picture, more or less degraded.

    Returns:
      A dict of floats and small arrays; "degradation" in [0, 1] (0 = clean).
    """
    rng = np.random.default_rng([seed, global_id, image_number, 0x5E])
    u = _Draws(rng)
    n = {}
    n["roll"] = 0.3 * (u() + u() - 1.0)  # radians, triangular in [-0.3, 0.3]
    n["yaw"] = u(-0.5, 0.5)
    n["tx"], n["ty"] = u(-0.12, 0.12), u(-0.12, 0.12)
    n["scale"] = u(0.85, 1.12)
    n["brightness"] = u(0.7, 1.2)
    n["gradient"] = u(-0.4, 0.4, 2)
    n["cast"] = u(0.85, 1.15, 3)
    n["shade"] = u(-0.6, 0.6, 2)  # light direction on the face
    n["mouth_open"] = u() ** 2
    n["smile"] = u(-0.4, 1.0)
    n["blink"] = 0.12 if u() < 0.12 else u(0.75, 1.15)
    n["brow_raise"] = u(-0.015, 0.035)
    n["gaze"] = u(-0.35, 0.35, 2)
    n["bg_kind"] = int(3 * u())
    n["bg"] = u(0.0, 1.0, 6).reshape(2, 3)
    n["bg_angle"] = u(0.0, 2 * math.pi)
    n["bg_freq"] = u(4.0, 14.0)
    n["bg_cells"] = rng.random((6, 6, 3), np.float32)
    n["shirt"] = u(0.05, 0.95, 3)
    n["noise"] = u(0.005, 0.02)
    # Beta(1, 4) by its inverse CDF: most images clean-ish, a tail degraded, P(d > 0.5) = 1/16.
    d = 1.0 - (1.0 - u()) ** 0.25
    if degradation is not None:
        if not 0.0 <= degradation <= 1.0:
            raise ValueError(f"degradation must be in [0, 1], got {degradation}")
        d = float(degradation)
    n.update(_degradation_effects(d, u))
    return n


def _degradation_effects(d: float, u: _Draws) -> dict:
    """The blur, light, noise, contrast and occlusion of degradation level d."""
    n = {"degradation": d}
    # Effects grow with the square of the level: mid levels stay recognisable, the tail is hard.
    sev = d * d
    n["blur"] = 2.0 * sev * u(0.6, 1.0)  # Gaussian sigma in pixels at 64 x 64
    n["low_light"] = sev * u(0.3, 0.6)
    n["extra_noise"] = 0.06 * sev
    n["contrast"] = 1.0 - 0.45 * sev
    n["occlude"] = u() < 1.5 * (d - 0.5)  # none below 0.5, 3 in 4 at 1
    n["occ_box"] = u(0.0, 1.0, 4)
    n["occ_colour"] = u(0.0, 1.0, 3)
    n["noise_offset"] = (u(0.0, 2**16, 2)).astype(np.int64)
    return n


class _Canvas:
    """An image being painted, with the face-frame coordinates of its pixels."""

    def __init__(self, size: int, nuisance: dict):
        self.size = size
        self.scale = nuisance["scale"]
        self.cos, self.sin = math.cos(nuisance["roll"]), math.sin(nuisance["roll"])
        self.tx, self.ty = nuisance["tx"], nuisance["ty"]
        self.grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        px, py = self.grid[None, :] - self.tx, self.grid[:, None] - self.ty
        # Inverse pose, so that every part is drawn in the face's own upright frame.
        self.x = (self.cos * px + self.sin * py) / self.scale
        self.y = (self.cos * py - self.sin * px) / self.scale
        self.pixel = 2.0 / (size * self.scale)  # one pixel, in face units
        # Channels first while painting: blending (h, w) planes is ~3x faster than (h, w, 3).
        self.img = np.empty((3, size, size), np.float32)

    def window(self, cx: float, cy: float, rx: float, ry: float):
        """Pixel slices covering the face-frame box centre (cx, cy), half-sides (rx, ry), or None.

        Painting only inside each part's window is what makes rendering fast.
        """
        half = 0.5 * self.size
        col = (self.scale * (self.cos * cx - self.sin * cy) + self.tx + 1.0) * half - 0.5
        row = (self.scale * (self.sin * cx + self.cos * cy) + self.ty + 1.0) * half - 0.5
        ac, as_ = abs(self.cos), abs(self.sin)  # half-extents of the rotated box, in pixels
        rc = (ac * rx + as_ * ry) * self.scale * half + 1.5
        rr = (as_ * rx + ac * ry) * self.scale * half + 1.5
        r0, r1 = max(0, math.floor(row - rr)), min(self.size, math.ceil(row + rr) + 1)
        c0, c1 = max(0, math.floor(col - rc)), min(self.size, math.ceil(col + rc) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def coverage(self, dist: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] of a signed distance (negative inside)."""
        # A one-pixel linear ramp: the area of a pixel covered by a straight edge. In-place ufuncs,
        # since this runs ~25 times per image.
        t = dist * (-1.0 / self.pixel)
        t += 0.5
        np.maximum(t, 0.0, out=t)
        return np.minimum(t, 1.0, out=t)

    def paint(self, win, alpha: np.ndarray, colour) -> None:
        """Blends `colour` (a scalar, RGB [3] or planes [3, h, w]) over the window by `alpha`."""
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 1:
            colour = colour[:, None, None]
        patch = self.img[:, win[0], win[1]]
        patch += alpha * (colour - patch)


def _ellipse(x, y, a: float, b: float):
    # Distance scaled from the implicit function: exact on circles, close enough for edges.
    m = min(a, b)
    q = x * x
    q *= (m / a) ** 2
    t = y * y
    t *= (m / b) ** 2
    q += t
    np.sqrt(q, out=q)
    q -= m
    return q


def _capsule(x, y, ax: float, ay: float, bx: float, by: float, radius: float):
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    h = px * (dx / (dx * dx + dy * dy + 1e-12)) + py * (dy / (dx * dx + dy * dy + 1e-12))
    h = np.minimum(np.maximum(h, 0.0), 1.0)  # the nearest point stays on the segment
    px -= h * dx
    py -= h * dy
    return np.hypot(px, py) - radius


def _face_sdf(x, y, p: dict, cx: float):
    """Signed distance to the face outline: an ellipse whose lower half tapers to the chin."""
    a, b = p["head_a"], p["head_b"]
    v = (y - p["head_cy"]) / b
    t = np.minimum(np.maximum(v, 0.0), 1.0)
    a_eff = a * (1.0 + p["jaw_square"] * t - (p["jaw_square"] + p["jaw_taper"]) * t * t)
    return (np.sqrt(((x - cx) / a_eff) ** 2 + v * v) - 1.0) * min(a, b)


def _draw_background(cv: _Canvas, n: dict) -> None:
    # Backgrounds live in pixel space (they do not move with the head).
    g = cv.grid
    c0, c1 = n["bg"]
    if n["bg_kind"] == 0:  # linear gradient
        ca, sa = math.cos(n["bg_angle"]), math.sin(n["bg_angle"])
        t = 0.5 + 0.5 * (ca * g[None, :] + sa * g[:, None])
    elif n["bg_kind"] == 1:  # stripes
        ca, sa = math.cos(n["bg_angle"]), math.sin(n["bg_angle"])
        t = 0.5 + 0.5 * np.sin(n["bg_freq"] * (ca * g[None, :] + sa * g[:, None]))
    else:  # coarse tiles
        idx = np.arange(cv.size) * n["bg_cells"].shape[0] // cv.size
        cv.img[:] = n["bg_cells"][idx][:, idx].transpose(2, 0, 1)
        return
    cv.img[:] = c0[:, None, None] + t * (c1 - c0)[:, None, None]


def _draw_body(cv: _Canvas, p: dict, n: dict, fcx: float) -> None:
    """Long hair behind the head, neck, shoulders and ears."""
    a, b, cy = p["head_a"], p["head_b"], p["head_cy"]
    if p["hair_style"] == LONG:
        ha, hb, hcy = a + p["hair_volume"] + 0.07, b + 0.2, cy + 0.12
        win = cv.window(fcx, hcy, ha, hb)
        if win:
            x, y = cv.x[win], cv.y[win]
            d = np.maximum(_ellipse(x - fcx, y - hcy, ha, hb), y - (cy + 0.95 * b))
            cv.paint(win, cv.coverage(d), p["hair"] * 0.85)
    sy = cy + b + 0.55
    win = cv.window(0.5 * fcx, sy, 0.95, 0.5)
    if win:
        d = _ellipse(cv.x[win] - 0.5 * fcx, cv.y[win] - sy, 0.95, 0.5)
        cv.paint(win, cv.coverage(d), n["shirt"])
    ny0, ny1 = cy + 0.5 * b, cy + b + 0.2
    win = cv.window(0.5 * fcx, 0.5 * (ny0 + ny1), 0.42 * a, 0.5 * (ny1 - ny0) + 0.42 * a)
    if win:
        d = _capsule(cv.x[win], cv.y[win], 0.5 * fcx, ny0, 0.5 * fcx, ny1, 0.42 * a)
        cv.paint(win, cv.coverage(d), p["skin"] * 0.8)
    ey = p["eye_y"] + p["ear_dy"]
    for side in (-1.0, 1.0):
        # The ear on the side the head turns away from shows more.
        wfac = float(np.clip(1.0 - 0.9 * n["yaw"] * side, 0.25, 1.7))
        ex = fcx + side * (a * 0.97 + 0.25 * p["ear_r"] * wfac)
        r = p["ear_r"]
        win = cv.window(ex, ey, 0.55 * r * wfac, r)
        if win:
            x, y = cv.x[win] - ex, cv.y[win] - ey
            cv.paint(win, cv.coverage(_ellipse(x, y, 0.55 * r * wfac, r)), p["skin"] * 0.9)
            cv.paint(win, cv.coverage(_ellipse(x, y, 0.3 * r * wfac, 0.6 * r)), p["skin"] * 0.7)


def _draw_face(cv: _Canvas, p: dict, n: dict, fcx: float, feat: float) -> None:
    """Face outline with light-dependent shading, then the beard."""
    a, b, cy = p["head_a"], p["head_b"], p["head_cy"]
    win = cv.window(fcx, cy, a * (1.0 + p["jaw_square"]), b)
    if win is None:
        return
    x, y = cv.x[win], cv.y[win]
    face = cv.coverage(_face_sdf(x, y, p, fcx))
    # Shade as if the face were a sphere lit from direction n["shade"].
    shade = 1.0 + n["shade"][0] * (x - fcx) / a + n["shade"][1] * (y - cy) / b
    cv.paint(win, face, p["skin"][:, None, None] * np.clip(shade, 0.5, 1.5))
    nose_tip = p["eye_y"] + p["nose_len"]
    mouth_y = nose_tip + p["mouth_dy"]
    if p["blush"]:
        for side in (-1.0, 1.0):
            d = _ellipse(x - feat - side * (p["eye_dx"] + 0.02), y - nose_tip + 0.02, 0.07, 0.045)
            cv.paint(win, cv.coverage(d) * p["blush"], np.array([0.9, 0.35, 0.4], np.float32))
    colour = p["hair"] * 0.9
    if p["beard"] == 2:  # full beard: the face below the nose, bare round the mouth
        d = np.maximum(-_ellipse(x - feat, y - mouth_y + 0.01, p["mouth_w"] + 0.05, 0.09),
                       (nose_tip - 0.02) - y)  # fmt: skip
        cv.paint(win, face * cv.coverage(d), colour)
    elif p["beard"] == 3:  # goatee
        d = _ellipse(x - feat, y - mouth_y - 0.05, 0.6 * p["mouth_w"] + 0.02, 0.09)
        cv.paint(win, face * cv.coverage(d), colour)
    if p["beard"] in (1, 2):  # moustache
        my = 0.5 * (nose_tip + mouth_y) + 0.01
        d = _ellipse(x - feat, y - my, p["mouth_w"] + 0.02, 0.028)
        cv.paint(win, cv.coverage(d), colour)
    for mx, my in p["moles"]:
        mx, my = fcx + float(mx) * a, cy + float(my) * b
        if float(_face_sdf(mx, my, p, fcx)) < -0.03:
            mwin = cv.window(mx, my, 0.016, 0.016)
            if mwin:
                d = np.hypot(cv.x[mwin] - mx, cv.y[mwin] - my) - 0.016
                cv.paint(mwin, cv.coverage(d), p["skin"] * 0.35)


def _draw_eyes(cv: _Canvas, p: dict, n: dict, feat: float) -> None:
    """Eyes (sclera, iris, pupil), eyebrows and glasses."""
    ey = p["eye_y"]
    dark = p["skin"] * 0.3
    for side in (-1.0, 1.0):
        ex = feat + side * p["eye_dx"]
        w = p["eye_w"] * (1.0 - 0.25 * n["yaw"] * side)  # the far eye looks narrower
        h = p["eye_h"] * n["blink"]
        win = cv.window(ex, ey, w + 0.012, h + 0.012)
        if win:
            x, y = cv.x[win] - ex, cv.y[win] - ey
            cv.paint(win, cv.coverage(_ellipse(x, y, w + 0.012, h + 0.012)), dark)
            sclera = cv.coverage(_ellipse(x, y, w, h))
            cv.paint(win, sclera, np.float32(0.95))
            ix, iy = n["gaze"][0] * 0.5 * w, n["gaze"][1] * 0.3 * h
            r = np.hypot(x - ix, y - iy)
            cv.paint(win, np.minimum(sclera, cv.coverage(r - p["iris_r"])), p["iris"])
            cv.paint(win, np.minimum(sclera, cv.coverage(r - 0.45 * p["iris_r"])), 0.05)
        by = ey - p["eye_h"] - p["brow_dy"] - n["brow_raise"]
        lx = p["brow_len"] * math.cos(p["brow_angle"])
        ly = p["brow_len"] * math.sin(p["brow_angle"])
        win = cv.window(ex, by, abs(lx) + p["brow_t"], abs(ly) + p["brow_t"])
        if win:
            d = _capsule(cv.x[win], cv.y[win], ex - side * lx, by + ly, ex + side * lx, by - ly,
                         p["brow_t"])  # fmt: skip
            cv.paint(win, cv.coverage(d), p["hair"] * 0.8)
        if p["glasses"]:
            r = 1.45 * p["eye_w"]
            win = cv.window(ex, ey, r + 0.011, r + 0.011)
            if win:
                x, y = cv.x[win] - ex, cv.y[win] - ey
                if p["glasses"] == 1:
                    d = np.hypot(x, y) - r
                else:  # rounded rectangle
                    qx, qy = np.abs(x) - r * 0.95, np.abs(y) - r * 0.7
                    d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(
                        np.maximum(qx, qy), 0) - 0.01  # fmt: skip
                cv.paint(win, cv.coverage(np.abs(d) - 0.011), p["frame"])
    if p["glasses"]:
        x0, x1 = feat - p["eye_dx"] + 1.4 * p["eye_w"], feat + p["eye_dx"] - 1.4 * p["eye_w"]
        win = cv.window(0.5 * (x0 + x1), ey - 0.02, 0.5 * abs(x1 - x0) + 0.01, 0.01)
        if win:
            d = _capsule(cv.x[win], cv.y[win], x0, ey - 0.02, x1, ey - 0.02, 0.01)
            cv.paint(win, cv.coverage(d), p["frame"])


def _draw_nose_mouth(cv: _Canvas, p: dict, n: dict, feat: float) -> None:
    tip_y = p["eye_y"] + p["nose_len"]
    nx = feat + 0.06 * n["yaw"]  # the nose sticks out, so it moves further with yaw
    nw = p["nose_w"]
    win = cv.window(nx, tip_y - 0.5 * p["nose_len"], nw + 0.07, 0.5 * p["nose_len"] + nw)
    if win:
        x, y = cv.x[win], cv.y[win]
        side = 1.0 if n["yaw"] < 0 else -1.0  # shadow on the side turned away
        d = _capsule(x, y, feat + side * 0.3 * nw, p["eye_y"] + 0.03, nx + side * 0.6 * nw,
                     tip_y - 0.02, 0.012)  # fmt: skip
        cv.paint(win, cv.coverage(d) * 0.6, p["skin"] * 0.6)
        d = _ellipse(x - nx, y - tip_y + 0.01, nw, 0.6 * nw)
        cv.paint(win, cv.coverage(d), p["skin"] * 0.85)
        for s in (-1.0, 1.0):
            d = _ellipse(x - nx - s * 0.55 * nw, y - tip_y - 0.005, 0.3 * nw, 0.18 * nw)
            cv.paint(win, cv.coverage(d), p["skin"] * 0.35)
    my = tip_y + p["mouth_dy"]
    mw, open_h = p["mouth_w"], 0.055 * n["mouth_open"]
    win = cv.window(feat, my, mw, p["lip_t"] + open_h + 0.04)
    if win:
        x = cv.x[win] - feat
        # A smile lifts the corners: bend the mouth's vertical axis by a parabola.
        y = cv.y[win] - my + n["smile"] * 0.04 * (x / mw) ** 2
        cv.paint(win, cv.coverage(_ellipse(x, y, mw, p["lip_t"] + open_h)), p["lip"])
        inner = _ellipse(x, y, 0.85 * mw, max(open_h, 0.006))
        cv.paint(win, cv.coverage(inner), np.array([0.25, 0.05, 0.05], np.float32))


def _draw_hair(cv: _Canvas, p: dict, fcx: float) -> None:
    """Hair over the top of the head, bounded below by the style's hairline."""
    style = p["hair_style"]
    a, b, cy, vol = p["head_a"], p["head_b"], p["head_cy"], p["hair_volume"]
    if style == CURLY:
        vol += 0.08
    ha, hb, hcy = a + vol, b + vol, cy - 0.6 * vol
    # The window reaches higher than the ellipse, for spikes and buns.
    win = cv.window(fcx, hcy - 0.08, ha + 0.03, hb + 0.12)
    if win is None:
        return
    x, y = cv.x[win] - fcx, cv.y[win]
    d = _ellipse(x, y - hcy, ha, hb)
    # Hairlines sit above the eyebrows (at their highest, raised) whatever the face's layout.
    brow_top = p["eye_y"] - p["eye_h"] - p["brow_dy"] - 2.0 * p["brow_t"] - 0.035
    h0 = min(cy - p["hairline"] * b, brow_top - 0.04)
    u = x / a
    if style == BALD:  # tufts of hair over the ears only
        ax, y0, y1 = 0.92 * a, cy - 0.3 * b, p["eye_y"] + 0.02
        d = np.maximum(d, _capsule(np.abs(x), y, ax, y0, ax, y1, 0.06))
    elif style == FRINGE:
        line = brow_top + 0.2 * b * u * u + 0.012 * np.sin(x * 60.0)
        d = np.maximum(d, y - line)
    elif style == SIDE_PART:
        line = h0 + 0.35 * b * u * u + p["part_side"] * 0.12 * b * u
        d = np.maximum(d, y - line)
    elif style == LONG:  # centre parting, curtains down the sides
        d = np.maximum(d, y - (h0 - 0.05 * b + 0.9 * b * np.abs(u)))
    else:  # CROP, CURLY, SPIKY, BUN: a rounded hairline with temples
        d = np.maximum(d, y - (h0 + 0.4 * b * u * u))
        if style == CURLY:
            d += 0.02 * np.sin(x * 45.0) * np.sin(y * 45.0)
        elif style == SPIKY:  # spikes, longest on the crown
            d -= 0.07 * np.abs(np.sin(x * 22.0)) * np.minimum(np.maximum(hcy - y, 0.0) / hb, 1.0)
        elif style == BUN:
            r = 0.1 + 0.25 * vol
            d = np.minimum(d, np.hypot(x, y - (hcy - hb - 0.4 * r)) - r)
    cv.paint(win, cv.coverage(d), p["hair"])


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    # Drawing fresh Gaussian noise per image costs as much as painting the face; a fixed bank,
    # cropped at a per-image offset, is as good for a nuisance and keeps rendering deterministic.
    bank = np.random.default_rng(0x0153).standard_normal((3, 3 * size, 3 * size), np.float32)
    bank.flags.writeable = False
    return bank


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [3, S, S] planes, edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    size = img.shape[1]
    idx = np.clip(np.arange(-radius, size + radius), 0, size - 1)
    pad = img[:, idx]
    out = k[0] * pad[:, :size]
    for i in range(1, len(k)):
        out += k[i] * pad[:, i : i + size]
    pad = out[:, :, idx]
    out = k[0] * pad[:, :, :size]
    for i in range(1, len(k)):
        out += k[i] * pad[:, :, i : i + size]
    return out


def _light_and_degrade(cv: _Canvas, n: dict) -> np.ndarray:
    """Occlusion, lighting, contrast loss, blur and noise; returns uint8 [S, S, 3]."""
    size, img, g = cv.size, cv.img, cv.grid
    if n["occlude"]:  # a horizontal band (scarf, sunglasses) or a box (hand, sign)
        u = n["occ_box"]
        if u[3] < 0.35:
            half_w, half_h = size, size * (0.05 + 0.06 * u[2])
        else:
            half_w, half_h = size * (0.08 + 0.14 * u[2]), size * (0.08 + 0.2 * (u[3] - 0.35))
        c, r = size * (0.3 + 0.4 * u[0]), size * (0.3 + 0.4 * u[1])
        rows = slice(max(0, int(r - half_h)), max(0, int(r + half_h)))
        cols = slice(max(0, int(c - half_w)), max(0, int(c + half_w)))
        img[:, rows, cols] = n["occ_colour"][:, None, None]
    # Brightness, colour cast and the 0..255 range in one multiply.
    gain = 255.0 * n["brightness"] * (1.0 - n["low_light"])
    light = gain * (1.0 + n["gradient"][0] * g[None, :] + n["gradient"][1] * g[:, None])
    img *= light[None] * n["cast"][:, None, None]
    contrast = n["contrast"]
    if contrast < 0.99:  # contrast loss towards the image mean
        mean = img.mean(axis=(1, 2))
        img *= contrast
        img += ((1.0 - contrast) * mean)[:, None, None]
    sigma = n["blur"] * size / 64.0
    if sigma > 0.3:
        img = _gaussian_blur(img, sigma)
    oy, ox = n["noise_offset"] % (2 * size)
    noise = _noise_bank(size)[:, oy : oy + size, ox : ox + size]
    img += noise * (255.0 * (n["noise"] + n["extra_noise"]))
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((size, size, 3), np.uint8)
    np.copyto(out, img.transpose(1, 2, 0), casting="unsafe")  # truncates: a 0.5 level bias
    return out


def render_face(identity: dict, nuisance: dict, *, size: int = 64) -> np.ndarray:
    """Renders one face.

    Args:
      identity: the output of `identity_params`.
      nuisance: the output of `nuisance_params`.
      size: image side in pixels, >= 32.

    Returns:
      uint8[size, size, 3] RGB image.
    """
    cv = _Canvas(size, nuisance)
    fcx = 0.04 * nuisance["yaw"]  # the head outline turns a little,
    feat = 0.11 * nuisance["yaw"]  # the features on its surface more
    _draw_background(cv, nuisance)
    _draw_body(cv, identity, nuisance, fcx)
    _draw_face(cv, identity, nuisance, fcx, feat)
    _draw_nose_mouth(cv, identity, nuisance, feat)
    _draw_eyes(cv, identity, nuisance, feat)
    _draw_hair(cv, identity, fcx)
    return _light_and_degrade(cv, nuisance)


@functools.lru_cache(maxsize=4096)
def _cached_identity(global_id: int, seed: int) -> dict:
    # An identity's parameters are reused by each of its images; never mutated by the renderer.
    return identity_params(global_id, seed=seed)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        valid = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SyntheticFaces:
    """Random-access source of rendered faces (a grain RandomAccessDataSource).

    Record `i` is image `i % images_per_identity` of local identity `i // images_per_identity`,
    whose global id is `identity_offset + i // images_per_identity`. Sources with disjoint
    global id ranges (and the same seed) hold disjoint people.

    Attributes:
      num_identities: number of people, >= 1.
      images_per_identity: images of each person, >= 1.
      image_size: image side in pixels, >= 32.
      seed: dataset seed, >= 0; the same (seed, index) always gives the same bytes.
      identity_offset: global id of local identity 0, >= 0.
    """

    num_identities: int
    images_per_identity: int
    image_size: int = 64
    seed: int = 0
    identity_offset: int = 0

    def __post_init__(self):
        _check_int("num_identities", self.num_identities, 1)
        _check_int("images_per_identity", self.images_per_identity, 1)
        _check_int("image_size", self.image_size, _MIN_SIZE, 1024)
        _check_int("seed", self.seed, 0)
        _check_int("identity_offset", self.identity_offset, 0)

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def __getitem__(self, index: int) -> dict:
        """Renders record `index`.

        Returns:
          {"image": uint8[S, S, 3], "label": int32 local identity, "degradation": float32 in
          [0, 1] (0 = clean), "identity": int64 global identity}.

        Raises:
          IndexError: if index is outside [-len, len).
        """
        size = len(self)
        index = int(index)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {size} records")
        index %= size
        local, image_number = divmod(index, self.images_per_identity)
        global_id = self.identity_offset + local
        nuisance = nuisance_params(global_id, image_number, seed=self.seed)
        image = render_face(_cached_identity(global_id, self.seed), nuisance, size=self.image_size)
        return {
            "image": image,
            "label": np.int32(local),
            "degradation": np.float32(nuisance["degradation"]),
            "identity": np.int64(global_id),
        }

    @property
    def labels(self) -> np.ndarray:
        """int32 [len]: the local identity of every record, without rendering."""
        return np.repeat(np.arange(self.num_identities, dtype=np.int32), self.images_per_identity)

    @property
    def num_classes(self) -> int:
        return self.num_identities


def make_verification_pairs(
    labels: np.ndarray, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced same/different pairs of records, for a verification set.

    Same pairs pick an identity with at least two records, uniformly, then two distinct records
    of it; different pairs pick two distinct identities, then one record of each. The pairs come
    shuffled, so contiguous folds hold both kinds.

    Args:
      labels: int [N] identity of each record.
      num_pairs: total number of pairs, even and >= 2; half are same, half different.
      seed: seed of the draw; the same arguments always give the same pairs.

    Returns:
      (idx_a, idx_b, issame): int64 [num_pairs] record indices, idx_a != idx_b, and bool
      [num_pairs], True for a same-identity pair.

    Raises:
      ValueError: if num_pairs is not even and >= 2, or the labels hold no identity with two
        records or fewer than two identities.
    """
    labels = np.asarray(labels).reshape(-1)
    _check_int("num_pairs", num_pairs, 2)
    if num_pairs % 2:
        raise ValueError(f"num_pairs must be even (half same, half different), got {num_pairs}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        raise ValueError(
            "labels must hold at least 2 identities and one with >= 2 records, got "
            f"{len(classes)} identities with at most {counts.max(initial=0)} records"
        )
    rng = np.random.default_rng(seed)
    members = np.argsort(inverse, kind="stable")  # records grouped by identity
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    half = num_pairs // 2

    def pick(cls: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return members[starts[cls] + offset]

    many = np.flatnonzero(counts >= 2)
    cls = many[rng.integers(len(many), size=half)]
    first = rng.integers(counts[cls])
    # A second record other than the first: draw from the count-1 others and skip the first.
    second = rng.integers(counts[cls] - 1)
    second += second >= first
    cls_a = rng.integers(len(classes), size=half)
    cls_b = (cls_a + rng.integers(1, len(classes), size=half)) % len(classes)
    idx_a = np.concatenate([pick(cls, first), pick(cls_a, rng.integers(counts[cls_a]))])
    idx_b = np.concatenate([pick(cls, second), pick(cls_b, rng.integers(counts[cls_b]))])
    issame = np.repeat([True, False], half)
    order = rng.permutation(num_pairs)
    return idx_a[order].astype(np.int64), idx_b[order].astype(np.int64), issame[order]
