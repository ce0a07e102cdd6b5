"""The numbers behind the brain generator: sequences, tissue signals and the class-signature
probabilities.

Everything here is data (no random draws): :mod:`.template` builds the tissue fractions of
:data:`TISSUES`, :func:`~medmap.data.sim.brain.simulate_case` mixes them with :data:`_SIGNAL`
(jittered per case), and :data:`P` holds the overlap knobs that :mod:`.plan` and
:mod:`.lesions` draw from (see the datasheet).
"""

from __future__ import annotations

import numpy as np

SEQUENCES = ("T1WI", "T1C", "T2WI", "T2FLAIR")

# Tissue classes of the anatomy stack, and their clean signal per sequence (~1 = brightest).
TISSUES = ("gm", "wm", "csf", "dura", "bone", "marrow", "scalp", "vessel", "choroid")
_SIGNAL = np.array(
    [
        # gm    wm    csf   dura  bone  marrow scalp vessel choroid
        [0.60, 0.85, 0.18, 0.40, 0.05, 0.80, 0.90, 0.30, 0.50],  # T1WI
        [0.62, 0.86, 0.18, 0.72, 0.05, 0.84, 0.92, 0.95, 0.90],  # T1C (dura, vessels, choroid)
        [0.62, 0.45, 1.00, 0.30, 0.04, 0.55, 0.65, 0.10, 0.70],  # T2WI
        [0.72, 0.50, 0.08, 0.35, 0.04, 0.55, 0.70, 0.10, 0.45],  # T2FLAIR (CSF nulled)
    ],
    np.float32,
)
_GM, _WM, _CSF, _MARROW, _SCALP = 0, 1, 2, 5, 6

# Class-signature probabilities (the overlap knobs; see DATASHEET).
P = {
    "men_embed": (0.0, 0.7),      # meningioma: how deep the dome indents the brain (x a)
    "men_hetero": 0.3,            # heterogeneous meningioma (patchy enhancement, calcification)
    "men_oedema": (0.55, 0.35, 0.1),  # meningioma oedema: none, mild, moderate
    "tumour_t1": (0.65, 1.2),     # T1 of solid tumour / grey matter (both classes)
    "men_enhancement": (2.3, 2.8),  # T1C / T1 of the tumour: avid, meningioma
    "malig_enhancement": (1.6, 2.1),  # ... enhancing rim / solid part of malignant lesions
    "men_cleft": 0.35,            # CSF cleft between meningioma and brain
    "men_t2_bright": 0.2,         # T2-hyperintense (microcystic / angiomatous-like) meningioma
    "glioma": 0.5,                # malignant: glioma vs metastases
    "glioma_site": (0.4, 0.25, 0.35),  # glioma: superficial (cortex), periventricular, deep
    "malig_t2_bright": 0.6,       # T2-hyperintense solid tumour (else iso, like a meningioma)
    "haemorrhage": 0.3,           # malignant: T1-bright haemorrhagic foci
    "glioma_necrosis": 0.55,      # ring enhancement around necrosis (else solid)
    "met_necrosis": 0.5, 
    "met_count": (0.6, 0.25, 0.15),  # 1, 2 or 3 metastases
    "malig_oedema": 0.6,          # extensive vs minimal vasogenic oedema
    "texture": 0.08,              # max internal texture amplitude, drawn per sequence
    "fat_sat": 0.35,              # per sequence: fat-suppressed acquisition
    "flair_csf": (0.04, 0.3),     # FLAIR CSF signal (inversion imperfect, inflow)
    "contrast_jitter": 0.08,      # per-case, per-tissue, per-sequence signal jitter (log std)
    "gain": 0.1,                  # per-case, per-sequence global gain (log std)
}
