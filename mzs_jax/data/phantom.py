"""Procedural medical phantoms (stand-ins for the paper's datasets, §4): chest X-ray with lungs,
heart and opacities; short-axis cardiac MRI (RV/MYO/LV, ACDC ids); abdominal CT (Synapse ids).

Every sample is drawn from its own `np.random.default_rng([seed, kind, index])`, so sample `i` is
the same whatever `n` is. Images are in radiological view: image left = patient right.
"""

from __future__ import annotations

import numpy as np

from mzs_jax.data import phantom_text as text
from mzs_jax.data.phantom_shapes import (
    _grid,
    acquire,
    blob,
    ellipse_profile,
    paint,
    size_word,
    smooth_texture,
)
from mzs_jax.data.synapse import SYNAPSE_LABELS  # one table for the phantom and the loader

KINDS = ("xray", "mri", "ct")
_KIND_ID = {"xray": 1, "mri": 2, "ct": 3}

XRAY_LABELS = {"right lung": 1, "left lung": 2, "heart": 3, "opacity": 4}
ACDC_LABELS = {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
CT_LESION_LABEL = 9  # phantom-only; folded into the liver (5) when written as Synapse
CT_WINDOW = (-125.0, 275.0)  # TransUNet Synapse preprocessing: clip HU, scale to [0, 1]
ACDC_GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


def sample_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _KIND_ID[kind], int(index)])


def structure_mask(sample: dict, name: str) -> np.ndarray:
    """Bool `(H, W)` mask of structure `name` (a key of `sample["structures"]`)."""
    return np.isin(sample["mask"], sample["structures"][name])


def _present(mask: np.ndarray, labels: dict[str, int]) -> dict[str, tuple[int, ...]]:
    ids = set(np.unique(mask).tolist())
    return {name: (v,) for name, v in labels.items() if v in ids}


# ----------------------------------------------------------------------------- chest X-ray
_XRAY_FINDINGS = ("normal", "consolidation", "covid", "nodule", "cardiomegaly")
_XRAY_P = (0.3, 0.25, 0.2, 0.15, 0.1)


def _lung_zone(mask: np.ndarray, region: np.ndarray) -> tuple[str, str]:
    """Patient side and zone of `region` (bool) relative to the lungs `mask > 0`."""
    ys, xs = np.nonzero(region)
    side = "right" if xs.mean() < mask.shape[1] / 2 else "left"  # image left = patient right
    ly = np.nonzero(np.isin(mask, (1, 2)))[0]
    mid = (ly.min() + ly.max()) / 2 if ly.size else mask.shape[0] / 2
    return side, ("upper" if ys.mean() < mid else "lower")


def chest_anatomy(
    rng: np.random.Generator, size: int, cardiomegaly: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Body, spine, ribs, lungs and heart (enlarged when `cardiomegaly`) of a chest X-ray
    phantom: image `(S, S)` float32 before acquisition, mask `(S, S)` with XRAY_LABELS 1-3."""
    S, shp = size, (size, size)
    yy, xx = _grid(size, size)
    tex = smooth_texture(shp, rng, 8)
    img = np.full(shp, 0.04, np.float32)
    mask = np.zeros(shp, np.int32)
    body = blob(shp, (0.62 * S, 0.5 * S), (0.58 * S, 0.47 * S), rng, wobble=0.03)
    paint(img, body, 0.5, tex, 0.03)
    spine = (np.abs(xx - 0.5 * S) < 0.05 * S) & body
    img[spine] = 0.72
    hs = rng.uniform(1.3, 1.45) if cardiomegaly else rng.uniform(0.9, 1.05)
    heart = blob(
        shp, (0.66 * S, 0.55 * S), (0.12 * S * hs, 0.15 * S * hs), rng, angle=-0.4, wobble=0.05
    )
    lung_r = blob(shp, (0.5 * S, 0.3 * S), (0.3 * S, 0.14 * S), rng, wobble=0.05)
    lung_l = blob(shp, (0.5 * S, 0.7 * S), (0.29 * S, 0.13 * S), rng, wobble=0.05)
    rib_phase = 2 * np.pi * (yy + 12 * ((xx - 0.5 * S) / S) ** 2 * S / 4) / (0.09 * S)
    ribs = 0.06 * (np.sin(rib_phase + rng.uniform(0, 6.3)) > 0.55)
    for region, label in ((lung_r, 1), (lung_l, 2)):
        region &= ~heart & ~spine & body
        img[region] = 0.16 + 0.04 * tex[region] + ribs[region]
        mask[region] = label
    paint(img, heart & body, 0.68, tex, 0.02)
    mask[heart & body] = 3
    return img, mask


def xray_sample(rng: np.random.Generator, size: int = 64) -> dict:
    """One chest X-ray phantom: image `(S, S, 1)` in [0, 1], mask `(S, S)` with XRAY_LABELS."""
    S, shp = size, (size, size)
    finding = str(rng.choice(_XRAY_FINDINGS, p=_XRAY_P))
    img, mask = chest_anatomy(rng, size, finding == "cardiomegaly")
    lungs = mask.copy()
    n_lesions = {
        "normal": 0,
        "cardiomegaly": 0,
        "consolidation": 1,
        "nodule": 1,
        "covid": int(rng.integers(2, 5)),
    }[finding]
    lesion_tex = smooth_texture(shp, rng, 12)
    lesion_all = np.zeros(shp, bool)
    for k in range(n_lesions):
        lung_label = (k % 2) + 1 if finding == "covid" else int(rng.integers(1, 3))
        ys, xs = np.nonzero(lungs == lung_label)
        if ys.size == 0:
            continue
        j = int(rng.integers(ys.size))
        r = {"nodule": (0.035, 0.05), "consolidation": (0.08, 0.13), "covid": (0.05, 0.09)}[finding]
        ry, rx = rng.uniform(*r, 2) * S
        radii, angle = (max(ry, 1.5), max(rx, 1.5)), rng.uniform(0, np.pi)
        region = blob(shp, (ys[j], xs[j]), radii, rng, wobble=0.15, angle=angle)
        region &= lungs == lung_label
        delta = {"nodule": 0.45, "consolidation": 0.33, "covid": 0.17}[finding]
        img[region] += delta + 0.05 * lesion_tex[region]
        lesion_all |= region
    mask[lesion_all] = 4
    if finding in ("consolidation", "covid", "nodule") and not lesion_all.any():
        finding = "normal"  # at tiny sizes a lesion can miss the lung; keep caption truthful
    side, zone = _lung_zone(lungs, lesion_all) if lesion_all.any() else ("right", "lower")
    size_w = "small" if finding == "nodule" else size_word(lesion_all.mean(), 0.01, 0.025)
    img = np.clip(acquire(img, rng, blur_px=0.6 * S / 64, noise=0.02), 0, 1)
    return {
        "image": img[..., None],
        "mask": mask,
        "caption": text.xray_caption(rng, finding, size_w, side, zone),
        "metadata": text.metadata(rng, finding, "X-ray", "chest"),
        "structures": {**_present(mask, XRAY_LABELS), "lungs": (1, 2)},
        "finding": finding,
        "covid_class": {"covid": "COVID-19", "normal": "Normal"}.get(finding, "Non-COVID"),
    }


# ----------------------------------------------------------------------------- cardiac MRI
def cardiac_params(rng: np.random.Generator, size: int, group: str | None = None) -> dict:
    """Per-patient shape parameters (ACDC pathology group drives cavity size and wall thickness)."""
    group = group or str(rng.choice(ACDC_GROUPS))
    lv, wall, ef, rv = {
        "NOR": (0.11, 0.035, 0.35, 1.0),
        "DCM": (0.16, 0.027, 0.1, 1.0),
        "HCM": (0.085, 0.06, 0.5, 0.9),
        "MINF": (0.13, 0.03, 0.15, 1.0),
        "RV": (0.11, 0.035, 0.3, 1.6),
    }[group]
    return {
        "group": group,
        "lv": lv * size * rng.uniform(0.92, 1.08),
        "wall": wall * size * rng.uniform(0.9, 1.1),
        "ef": ef,
        "rv": rv * rng.uniform(0.9, 1.1),
        "center": (size * rng.uniform(0.47, 0.53), size * rng.uniform(0.5, 0.56)),
        "shape_seed": int(rng.integers(2**31)),
        "size": size,
    }


def cardiac_slice(p: dict, t: float, phase: str, rng: np.random.Generator) -> tuple:
    """Image `(S, S)` and ACDC mask at level `t` (0 base .. 1 apex), phase 'ED' or 'ES'."""
    S = p["size"]
    shp = (S, S)
    shape_rng = np.random.default_rng(p["shape_seed"])  # same wobble on every slice
    squeeze = 1.0 - p["ef"] if phase == "ES" else 1.0
    taper = np.sqrt(max(1.0 - 0.8 * t * t, 0.05))
    r_lv = p["lv"] * taper * np.sqrt(squeeze)
    r_ep = r_lv + p["wall"] * (1.15 if phase == "ES" else 1.0)
    img = np.full(shp, 0.03, np.float32)
    mask = np.zeros(shp, np.int32)
    tex = smooth_texture(shp, rng, 8)
    body = blob(shp, (0.5 * S, 0.5 * S), (0.42 * S, 0.48 * S), shape_rng, wobble=0.03)
    paint(img, body, 0.38, tex, 0.05)
    lungs = ellipse_profile(shp, (0.45 * S, 0.5 * S), (0.3 * S, 0.4 * S)) < 1
    img[lungs & body & (ellipse_profile(shp, p["center"], (0.3 * S, 0.3 * S)) > 1)] = 0.08
    cy, cx = p["center"]
    epi = blob(shp, (cy, cx), (r_ep, r_ep * 1.05), shape_rng, wobble=0.04)
    if t < 0.85:
        rv_r = (p["lv"] * 1.1 * p["rv"]) * taper * np.sqrt(squeeze if p["group"] != "RV" else 0.9)
        centre = (cy - 0.2 * rv_r, cx - r_ep - 0.35 * rv_r)
        rv = blob(shp, centre, (rv_r * 1.25, rv_r * 0.8), shape_rng, angle=0.3, wobble=0.08) & ~epi
        paint(img, rv, 0.8, tex, 0.03)
        mask[rv] = 1
    cavity = (
        blob(shp, (cy, cx), (r_lv, r_lv * 1.05), shape_rng, wobble=0.04)
        if t < 0.95
        else np.zeros(shp, bool)
    )
    myo = epi & ~cavity
    if p["group"] == "MINF":  # a thinned, infarcted segment (cavity bulges into the wall)
        yy, xx = _grid(S, S)
        seg = (xx > cx) & (yy > cy) & epi & (ellipse_profile(shp, (cy, cx), (r_ep, r_ep)) < 0.93)
        cavity |= seg & (t < 0.95)
        myo &= ~seg
    paint(img, myo, 0.25, tex, 0.02)
    mask[myo] = 2
    paint(img, cavity, 0.85, tex, 0.03)
    mask[cavity] = 3
    img = np.abs(acquire(img, rng, blur_px=0.7 * S / 64, noise=0.025))  # Rician-like magnitude
    return np.clip(img, 0, 1), mask


def _level(t: float) -> str:
    return "basal" if t < 0.3 else ("apical" if t > 0.7 else "mid-ventricular")


def mri_sample(rng: np.random.Generator, size: int = 64) -> dict:
    """One short-axis MRI phantom slice: image `(S, S, 1)`, mask with ACDC_LABELS."""
    p = cardiac_params(rng, size)
    t = float(rng.uniform(0.1, 0.75))
    phase = "ED" if rng.random() < 0.5 else "ES"
    img, mask = cardiac_slice(p, t, phase, rng)
    return {
        "image": img[..., None],
        "mask": mask,
        "caption": text.mri_caption(rng, p["group"], _level(t)),
        "metadata": text.metadata(rng, p["group"], "MRI", "heart"),
        "structures": _present(mask, ACDC_LABELS),
        "finding": p["group"],
    }


def cardiac_volume(
    seed: int,
    index: int,
    size: int = 64,
    n_slices: int = 8,
    spacing: tuple[float, float, float] | None = None,
) -> dict:
    """ACDC-like patient: ED and ES volumes `(S, S, Z)` (float32 [0, 1]) + label volumes,
    anisotropic `spacing` (mm; default ~1.5 x 1.5 x 10), group and Info.cfg fields."""
    rng = sample_rng(seed, "mri", 10_000 + index)
    p = cardiac_params(rng, size)
    if spacing is None:
        sp = float(rng.uniform(1.3, 1.7))
        spacing = (sp, sp, float(rng.choice((5.0, 10.0))))
    out = {"group": p["group"], "spacing": tuple(float(s) for s in spacing)}
    for phase in ("ED", "ES"):
        pairs = [cardiac_slice(p, z / max(n_slices - 1, 1), phase, rng) for z in range(n_slices)]
        out[phase] = (np.stack([a for a, _ in pairs], -1), np.stack([m for _, m in pairs], -1))
    height = float(rng.uniform(150, 195))
    out["info"] = {
        "ED": 1,
        "ES": int(rng.integers(8, 14)),
        "Group": p["group"],
        "Height": round(height, 1),
        "NbFrame": 30,
        "Weight": round(float(rng.uniform(50, 110)), 1),
    }
    return out


# ----------------------------------------------------------------------------- abdominal CT
# name: (centre y, x as fraction of S), (radii y, x), HU, z centre, z half-width (0 top .. 1 bottom)
_CT_ORGANS = {
    "liver": ((0.45, 0.32), (0.22, 0.2), 60.0, 0.3, 0.6),
    "spleen": ((0.55, 0.76), (0.09, 0.06), 50.0, 0.3, 0.35),
    "stomach": ((0.36, 0.64), (0.1, 0.12), 25.0, 0.25, 0.35),
    "pancreas": ((0.5, 0.55), (0.035, 0.13), 45.0, 0.45, 0.25),
    "left kidney": ((0.62, 0.68), (0.075, 0.05), 160.0, 0.6, 0.3),
    "right kidney": ((0.62, 0.32), (0.075, 0.05), 160.0, 0.65, 0.3),
    "gallbladder": ((0.53, 0.3), (0.045, 0.035), 10.0, 0.5, 0.2),
    "aorta": ((0.6, 0.53), (0.028, 0.028), 200.0, 0.5, 0.9),
}


def ct_params(rng: np.random.Generator, size: int) -> dict:
    jitter = {k: (rng.uniform(-0.02, 0.02, 2), rng.uniform(0.88, 1.12, 2)) for k in _CT_ORGANS}
    lesion = None
    if rng.random() < 0.4:
        lesion = {
            "z": float(rng.uniform(0.15, 0.5)),
            "r": float(rng.uniform(0.025, 0.07)),
            "shift": rng.uniform(-0.1, 0.1, 2),
        }
    return dict(size=size, jitter=jitter, lesion=lesion, shape_seed=int(rng.integers(2**31)))


def ct_slice(p: dict, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU image `(S, S)` and mask (SYNAPSE_LABELS + CT_LESION_LABEL) at level `t` (0 top)."""
    S = p["size"]
    shp = (S, S)
    shape_rng = np.random.default_rng(p["shape_seed"])
    hu = np.full(shp, -1000.0, np.float32)
    mask = np.zeros(shp, np.int32)
    tex = smooth_texture(shp, rng, 10)
    body = blob(shp, (0.5 * S, 0.5 * S), (0.36 * S, 0.46 * S), shape_rng, wobble=0.03)
    paint(hu, body, -100.0, tex, 10.0)  # subcutaneous fat
    inner = blob(shp, (0.5 * S, 0.5 * S), (0.32 * S, 0.42 * S), shape_rng, wobble=0.03)
    paint(hu, inner, -10.0, tex, 25.0)  # bowel and mesenteric fat
    for name, ((cy, cx), (ry, rx), value, zc, zh) in _CT_ORGANS.items():
        extent = 1.0 - ((t - zc) / zh) ** 2
        if extent <= 0.05:
            continue
        (dy, dx), (sy, sx) = p["jitter"][name]
        scale = np.sqrt(extent) if name != "aorta" else 1.0
        radii = (ry * sy * scale * S, rx * sx * scale * S)
        angle = 0.35 if name == "pancreas" else 0.0
        centre = ((cy + dy) * S, (cx + dx) * S)
        region = blob(shp, centre, radii, shape_rng, angle=angle, wobble=0.08) & inner
        paint(hu, region, value, tex, 8.0)
        mask[region] = SYNAPSE_LABELS[name]
        if name == "stomach":  # a gas pocket at the anterior (top) edge of the stomach
            gas_centre = ((cy + dy - ry * 0.6) * S, (cx + dx) * S)
            gas = region & (ellipse_profile(shp, gas_centre, (0.4 * ry * S, 0.6 * rx * S)) < 1)
            hu[gas] = -700.0
    spine_r = ellipse_profile(shp, (0.73 * S, 0.5 * S), (0.06 * S, 0.055 * S))
    spine = spine_r < 1
    hu[spine] = 450.0 + 150.0 * (spine_r[spine] > 0.75)  # cortical rim brighter
    mask[spine] = 0
    les = p["lesion"]
    if les is not None and abs(t - les["z"]) < les["r"] * 2.5:
        r = les["r"] * np.sqrt(max(1 - ((t - les["z"]) / (les["r"] * 2.5)) ** 2, 0)) * S
        (dy, dx), _ = p["jitter"]["liver"]
        c = ((0.45 + dy + les["shift"][0]) * S, (0.3 + dx + les["shift"][1]) * S)
        region = blob(shp, c, (r, r * 1.1), shape_rng, wobble=0.1) & (mask == 5)
        hu[region] = 15.0 + 6.0 * tex[region]
        mask[region] = CT_LESION_LABEL
    hu = acquire(hu, rng, blur_px=0.5 * S / 64, noise=12.0)
    return hu, mask


def ct_window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] with the Synapse window [-125, 275]."""
    lo, hi = CT_WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def ct_sample(rng: np.random.Generator, size: int = 64) -> dict:
    """One abdominal CT phantom slice: image `(S, S, 1)` windowed to [0, 1], mask, HU."""
    p = ct_params(rng, size)
    les = p["lesion"]
    t = float(les["z"] + rng.uniform(-0.3, 0.3) * les["r"]) if les else float(rng.uniform(0.1, 0.8))
    hu, mask = ct_slice(p, t, rng)
    lesion = mask == CT_LESION_LABEL
    areas = {n: int((mask == v).sum()) for n, v in SYNAPSE_LABELS.items()}
    organs = sorted((n for n in areas if areas[n]), key=lambda n: -areas[n])  # largest first
    found = bool(lesion.any())
    lobe = "right" if found and np.nonzero(lesion)[1].mean() < 0.3 * size else "left"
    lesion_size = size_word(lesion.mean(), 0.004, 0.012) if found else None
    structures = _present(mask, SYNAPSE_LABELS)
    if found:
        structures["liver lesion"] = (CT_LESION_LABEL,)
        structures["liver"] = (5, CT_LESION_LABEL)
    return {
        "image": ct_window(hu)[..., None],
        "mask": mask,
        "hu": hu,
        "caption": text.ct_caption(rng, organs, lesion_size, lobe),
        "metadata": text.metadata(rng, "ct_lesion" if found else "ct_normal", "CT", "abdomen"),
        "structures": structures,
        "finding": "lesion" if found else "normal",
    }


def ct_volume(
    seed: int,
    index: int,
    size: int = 64,
    n_slices: int = 12,
    spacing: tuple[float, float, float] | None = None,
) -> dict:
    """Synapse-like case: HU volume `(Z, S, S)` (slices first, as in the TransUNet h5), mask."""
    rng = sample_rng(seed, "ct", 10_000 + index)
    p = ct_params(rng, size)
    if spacing is None:
        sp = float(rng.uniform(0.6, 0.9)) * 512 / size
        spacing = (sp, sp, float(rng.choice((2.5, 5.0))))
    pairs = [ct_slice(p, (z + 0.5) / n_slices, rng) for z in range(n_slices)]
    return {
        "hu": np.stack([a for a, _ in pairs]),
        "mask": np.stack([m for _, m in pairs]),
        "spacing": tuple(float(s) for s in spacing),
    }


# ----------------------------------------------------------------------------- public API
_SAMPLERS = {"xray": xray_sample, "mri": mri_sample, "ct": ct_sample}
FINDINGS = {"xray": _XRAY_FINDINGS, "mri": ACDC_GROUPS, "ct": ("normal", "lesion")}
# every structure name a sample of each kind can have (`sample["structures"]` keys)
STRUCTURES = {
    "xray": (*XRAY_LABELS, "lungs"),
    "mri": tuple(ACDC_LABELS),
    "ct": (*SYNAPSE_LABELS, "liver lesion"),
}


def generate(
    kind: str, n: int, seed: int = 0, size: int = 64, start: int = 0, findings=""
) -> list[dict]:
    """`n` samples of `kind` ('xray' | 'mri' | 'ct'); each a dict with `image` `(S, S, 1)`
    float32 in [0, 1], `mask` `(S, S)` int32, `caption`, `metadata`, `structures` (name -> ids),
    `finding`, `id`. `findings` (comma-separated names or a sequence; empty = all): only samples
    with one of those findings, as `generate_findings`."""
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {KINDS}")
    names = findings.split(",") if isinstance(findings, str) else list(findings)
    names = [f.strip() for f in names if f.strip()]
    if names:
        return generate_findings(kind, n, names, seed, size, start)
    return [
        {**_SAMPLERS[kind](sample_rng(seed, kind, i), size), "id": f"{kind}_{i:05d}"}
        for i in range(start, start + n)
    ]


def generate_findings(
    kind: str,
    n: int,
    findings,
    seed: int = 0,
    size: int = 64,
    start: int = 0,
    max_draws: int | None = None,
) -> list[dict]:
    """Samples `start .. start+n-1` among those of `kind` whose `finding` is one of `findings`
    (e.g. `("cardiomegaly",)` for X-rays; `FINDINGS[kind]` lists them), in `generate`'s index
    order and with its ids, so `start` splits one stream into disjoint train/test sets."""
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {KINDS}")
    wanted = set(findings)
    if not wanted or wanted - set(FINDINGS[kind]):
        raise ValueError(
            f"data.findings={sorted(wanted)}: {kind} phantoms have findings {FINDINGS[kind]}"
        )
    total = start + n
    out, i, limit = [], 0, 1000 * max(total, 1) if max_draws is None else max_draws
    while len(out) < total and i < limit:
        s = generate(kind, 1, seed, size, start=i)[0]
        if s["finding"] in wanted:
            out.append(s)
        i += 1
    if len(out) < total:
        raise ValueError(f"data.findings={sorted(wanted)}: only {len(out)} of {total} in {i} draws")
    return out[start:]


def generate_xray(n: int, seed: int = 0, size: int = 64) -> list[dict]:
    return generate("xray", n, seed, size)


def generate_mri(n: int, seed: int = 0, size: int = 64) -> list[dict]:
    return generate("mri", n, seed, size)


def generate_captions(n: int, seed: int = 0, size: int = 64) -> list[dict]:
    """A mixed caption set: sample i is of kind KINDS[i % 3] (X-ray, MRI, CT in turn)."""
    return [generate(KINDS[i % 3], 1, seed, size, start=i // 3)[0] for i in range(n)]
