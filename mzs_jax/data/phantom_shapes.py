"""Drawing primitives for the procedural phantoms: deformed ellipses, rings, smooth texture,
blur and acquisition noise (NumPy + OpenCV, all driven by one `np.random.Generator`).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def blob(
    shape: tuple[int, int],
    center: tuple[float, float],
    radii: tuple[float, float],
    rng: np.random.Generator,
    *,
    angle: float = 0.0,
    wobble: float = 0.1,
    harmonics: int = 3,
) -> np.ndarray:
    """Bool `(H, W)`: an ellipse (centre `(y, x)`, radii `(ry, rx)` in px, rotated by `angle`
    rad) whose boundary radius is perturbed by low harmonics `1 + sum_k a_k cos(k t + p_k)`."""
    yy, xx = _grid(*shape)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / max(radii[1], 1e-3)
    v = (-dx * s + dy * c) / max(radii[0], 1e-3)
    r = np.sqrt(u * u + v * v)
    boundary = np.ones_like(r)
    if wobble > 0:
        theta = np.arctan2(v, u)
        for k in range(2, 2 + harmonics):
            amp, phase = rng.uniform(-wobble, wobble), rng.uniform(0, 2 * np.pi)
            boundary += amp / (k - 1) * np.cos(k * theta + phase)
    return r < boundary


def ellipse_profile(
    shape: tuple[int, int], center: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    """Float `(H, W)`: normalised elliptic radius (0 at the centre, 1 on the ellipse)."""
    yy, xx = _grid(*shape)
    return np.sqrt(((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2)


def smooth_texture(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Float32 `(H, W)` zero-mean, unit-ish low-frequency texture (bicubic upsampled noise)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def acquire(
    image: np.ndarray, rng: np.random.Generator, *, blur_px: float, noise: float
) -> np.ndarray:
    """Simulated acquisition: Gaussian blur of `blur_px` sigma, then additive Gaussian noise."""
    out = image.astype(np.float32)
    if blur_px > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=blur_px)
    if noise > 0:
        out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
    return out


def paint(
    image: np.ndarray,
    region: np.ndarray,
    value: float,
    texture: np.ndarray | None = None,
    texture_amp: float = 0.0,
) -> None:
    """In place: set `image[region]` to `value` (+ `texture_amp * texture` there)."""
    if texture is None or texture_amp == 0:
        image[region] = value
    else:
        image[region] = value + texture_amp * texture[region]


def size_word(area_fraction: float, small: float, large: float) -> str:
    """'small' / 'moderate' / 'large' from an area fraction and two thresholds."""
    if area_fraction < small:
        return "small"
    return "large" if area_fraction >= large else "moderate"
