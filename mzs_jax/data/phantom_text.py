"""Captions and correlated metadata for the procedural phantoms, generated from the drawn content.

Position words are included only in a fraction of captions (see docs/data.md: with position words
on every caption a quadrant prior alone solves the localisation task).
"""

from __future__ import annotations

import numpy as np

POSITION_PROB = 0.5  # fraction of captions that name a side/zone

XRAY_MODALITY = (
    "Chest X-ray",
    "Frontal chest radiograph",
    "PA chest radiograph",
    "Chest radiograph",
)
MRI_MODALITY = (
    "Cardiac MRI short-axis slice",
    "Cine cardiac MR image in short-axis view",
    "Short-axis cardiac magnetic resonance image",
)
CT_MODALITY = (
    "Axial CT of the abdomen",
    "Axial contrast-enhanced abdominal CT slice",
    "Abdominal computed tomography, axial view",
)

_HISTORY = {
    "normal": ("routine check-up", "preoperative assessment", "mild cough"),
    "consolidation": ("fever and productive cough", "community acquired pneumonia", "fever"),
    "covid": ("positive PCR test for SARS-CoV-2", "fever and dyspnoea", "COVID-19 contact"),
    "nodule": ("long-term smoker", "incidental finding", "weight loss and smoking history"),
    "cardiomegaly": ("shortness of breath", "congestive heart failure", "ankle oedema"),
    "NOR": ("palpitations with normal ECG", "screening examination"),
    "DCM": ("heart failure", "reduced exercise tolerance"),
    "HCM": ("family history of sudden cardiac death", "exertional chest pain"),
    "MINF": ("prior myocardial infarction", "known coronary artery disease"),
    "RV": ("pulmonary hypertension", "congenital heart disease"),
    "ct_normal": ("abdominal pain", "blunt abdominal trauma", "staging examination"),
    "ct_lesion": ("known colorectal cancer", "weight loss", "abnormal liver function tests"),
}
_AGE = {  # (low, high) years; findings skew older, as in the real collections
    "normal": (18, 60),
    "consolidation": (25, 85),
    "covid": (30, 90),
    "nodule": (45, 85),
    "cardiomegaly": (55, 92),
    "NOR": (18, 60),
    "DCM": (30, 80),
    "HCM": (15, 65),
    "MINF": (45, 85),
    "RV": (20, 75),
    "ct_normal": (18, 70),
    "ct_lesion": (45, 85),
}


def metadata(rng: np.random.Generator, key: str, modality: str, region: str) -> dict:
    """Metadata correlated with the finding `key`: age, sex, history, modality, body region."""
    lo, hi = _AGE[key]
    return {
        "modality": modality,
        "body_region": region,
        "age": float(rng.integers(lo, hi + 1)),
        "sex": "F" if rng.random() < 0.5 else "M",
        "history": str(rng.choice(_HISTORY[key])),
    }


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def xray_caption(rng: np.random.Generator, finding: str, size: str, side: str, zone: str) -> str:
    """Caption for a chest X-ray phantom. `side`/`zone` are patient-side words ('left'/'right',
    'upper'/'lower') and are used only for a POSITION_PROB fraction of captions."""
    mod = _pick(rng, XRAY_MODALITY)
    where = rng.random() < POSITION_PROB
    if finding == "normal":
        return f"{mod} showing clear lungs and a normal heart size, no focal opacity."
    if finding == "cardiomegaly":
        return f"{mod} showing an enlarged cardiac silhouette consistent with cardiomegaly."
    if finding == "covid":
        tail = " predominantly in the peripheral lower zones" if where else ""
        return f"{mod} showing bilateral patchy ground-glass opacities{tail}."
    if finding == "nodule":
        tail = f" in the {side} {zone} lung zone" if where else ""
        return f"{mod} showing a {size} well-defined pulmonary nodule{tail}."
    tail = f" in the {side} {zone} lung zone" if where else " in the lung"
    return f"{mod} showing a {size} area of dense consolidation{tail}."


def mri_caption(rng: np.random.Generator, group: str, level: str) -> str:
    """Caption for a short-axis cardiac MRI phantom of ACDC group `group` at `level`."""
    mod = _pick(rng, MRI_MODALITY)
    where = f" at the {level} level" if rng.random() < POSITION_PROB else ""
    text = {
        "NOR": "a normal left ventricle with normal myocardial thickness",
        "DCM": "a dilated left ventricle with thin myocardium",
        "HCM": "a small left ventricular cavity with markedly thickened myocardium",
        "MINF": "a mildly dilated left ventricle with focal myocardial wall thinning",
        "RV": "a dilated right ventricle with a normal left ventricle",
    }[group]
    return f"{mod}{where} showing {text}."


def ct_caption(
    rng: np.random.Generator, organs: list[str], lesion_size: str | None, lesion_lobe: str
) -> str:
    """Caption for an abdominal CT phantom showing `organs` and optionally a liver lesion."""
    mod = _pick(rng, CT_MODALITY)
    if lesion_size is not None:
        named = rng.random() < POSITION_PROB
        where = f" in the {lesion_lobe} lobe of the liver" if named else " in the liver"
        return f"{mod} showing a {lesion_size} hypodense lesion{where}."
    shown = [o for o in organs if o != "aorta"][:3] or ["aorta"]
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return f"{mod} showing normal {listed} without focal lesion."
