"""The numbers behind the liver generator: phases, tissue signals, lesion-class specifications
and the per-case randomness shared by all classes.

Everything here is data (no random draws): :mod:`.anatomy` paints tissues whose clean signal
per phase is :data:`_SIGNAL`; :mod:`.lesions` turns a class's :data:`CLASS_SPECS` entry into a
per-case appearance; :mod:`.datasheet` prints the same tables into DATASHEET.md.
"""

from __future__ import annotations

import numpy as np

from medmap.data.vocab import LIVER

PHASES: tuple[str, ...] = LIVER.modalities
T2, DWI, INP, OUTP, PRE, ART, VEN, DEL = PHASES
NONCONTRAST = (T2, DWI, INP, PRE)          # lesion given as a ratio to liver (OutPhase derived)
CONTRAST = (ART, VEN, DEL)                  # lesion given as enhancement added to its C-pre signal

# ---------------------------------------------------------------------------------------------
# Tissues and their signal per phase (before per-case variability)
# ---------------------------------------------------------------------------------------------
AIR, FAT, MUSCLE, VISCERA, BONE, FLUID, LIV, SPLEEN, KIDNEY, AORTA, IVC, PORTAL, HEPATIC = range(13)
_TISSUES = ("air", "fat", "muscle", "viscera", "bone", "fluid", "liver", "spleen", "kidney",
            "aorta", "ivc", "portal_vein", "hepatic_vein")
#                      T2    DWI   InP   OutP  C-pre C+A   C+V   C+Del
_SIGNAL = np.array([
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],   # air
    [1.10, 0.08, 1.30, 1.25, 0.12, 0.13, 0.14, 0.14],   # fat (fat-suppressed on DWI / C-*)
    [0.32, 0.30, 0.60, 0.58, 0.50, 0.58, 0.70, 0.72],   # muscle
    [0.60, 0.35, 0.60, 0.55, 0.45, 0.60, 0.80, 0.75],   # viscera (bowel, pancreas, ...)
    [0.55, 0.30, 0.90, 0.70, 0.45, 0.55, 0.60, 0.60],   # bone marrow
    [1.80, 0.20, 0.22, 0.22, 0.15, 0.15, 0.15, 0.15],   # fluid (bile, CSF, dilated duct)
    [0.45, 0.50, 0.90, 0.88, 0.80, 0.95, 1.25, 1.15],   # liver
    [0.80, 0.95, 0.70, 0.68, 0.60, 1.30, 1.30, 1.10],   # spleen
    [0.85, 0.90, 0.65, 0.63, 0.55, 1.60, 1.50, 1.30],   # kidney
    [0.12, 0.06, 0.50, 0.50, 0.35, 1.90, 1.35, 1.10],   # aorta (flow void on T2)
    [0.20, 0.08, 0.50, 0.50, 0.35, 0.50, 1.40, 1.10],   # IVC
    [0.18, 0.08, 0.50, 0.50, 0.35, 0.90, 1.60, 1.20],   # portal vein
    [0.18, 0.08, 0.50, 0.50, 0.35, 0.35, 1.50, 1.20],   # hepatic veins
], np.float32)
# multiplicative texture amplitude per tissue (parenchymal inhomogeneity, bowel content)
_TEXTURE = np.array([0, .04, .04, .15, .06, .01, .03, .05, .06, .02, .02, .02, .02], np.float32)

# ---------------------------------------------------------------------------------------------
# Lesion classes. Non-contrast phases: ratio of lesion signal to liver signal, (lo, hi) drawn
# uniformly per case. Contrast phases: enhancement (absolute signal added to the lesion's own
# C-pre signal; the liver itself gains ~0.15 / 0.45 / 0.35 on C+A / C+V / C+Delay).
# Compartments: core, rim (inner shell, thickness rim_t x radius), scar (centre), cap (thin
# outer capsule), fill (hemangioma's centripetal front: nodules "nod" vs unfilled "core"),
# halo (perilesional liver, multiplicative). Missing compartments default to core.
# ---------------------------------------------------------------------------------------------
CLASS_SPECS: dict[str, dict] = {
    "hepatic_cyst": dict(
        count=((1, 2, 3), (0.55, 0.25, 0.20)), size=(0.0, 0.9), edge=0.0, lob=0.03,
        het=0.02, fat=(0.0, 0.0, 0.0), complicated=0.25,
        ratio={T2: dict(core=(2.7, 4.2)), DWI: dict(core=(0.45, 1.2)),
               INP: dict(core=(0.30, 0.55)), PRE: dict(core=(0.22, 0.45))},
        enh={ART: dict(core=(0.0, 0.0)), VEN: dict(core=(0.0, 0.0)), DEL: dict(core=(0.0, 0.0))},
    ),
    "hepatic_hemangioma": dict(
        count=((1, 2), (0.7, 0.3)), size=(0.1, 1.0), edge=0.05, lob=0.10, het=0.04,
        fat=(0.0, 0.0, 0.0), flash=0.15, slow=0.2,
        ratio={T2: dict(core=(2.2, 3.6)), DWI: dict(core=(0.8, 1.7)),
               INP: dict(core=(0.38, 0.65)), PRE: dict(core=(0.30, 0.55))},
        enh={ART: dict(core=(0.0, 0.06), nod=(1.0, 1.6), fill=(0.15, 0.4)),
             VEN: dict(core=(0.0, 0.08), nod=(1.0, 1.4), fill=(0.45, 0.8)),
             DEL: dict(core=(0.05, 0.15), nod=(0.8, 1.2), fill=(0.75, 1.0))},
    ),
    "focal_nodular_hyperplasia": dict(
        count=((1, 2), (0.8, 0.2)), size=(0.15, 1.0), edge=0.08, lob=0.05, het=0.04,
        fat=(0.0, 0.0, 0.0), scar=(0.7, 0.15, 0.35),
        ratio={T2: dict(core=(0.95, 1.45), scar=(1.8, 3.0)), DWI: dict(core=(0.9, 1.5)),
               INP: dict(core=(0.85, 1.05)), PRE: dict(core=(0.85, 1.05), scar=(0.55, 0.7))},
        enh={ART: dict(core=(0.5, 1.15), scar=(0.0, 0.1)),
             VEN: dict(core=(0.40, 0.62), scar=(0.2, 0.4)),
             DEL: dict(core=(0.28, 0.45), scar=(0.55, 0.9))},
    ),
    "hepatocellular_carcinoma": dict(
        count=((1, 2, 3), (0.7, 0.2, 0.1)), size=(0.2, 1.0), edge=0.08, lob=0.06, het=0.12,
        fat=(0.6, 0.18, 0.45), cirrhosis=0.6, capsule=(0.7, 0.10, 0.18),
        ratio={T2: dict(core=(1.15, 1.9)), DWI: dict(core=(1.2, 2.1)),
               INP: dict(core=(0.7, 1.1)), PRE: dict(core=(0.65, 1.05))},
        enh={ART: dict(core=(0.5, 1.2)),
             VEN: dict(core=(0.12, 0.38), cap=(0.35, 0.65)),
             DEL: dict(core=(0.08, 0.3), cap=(0.5, 0.9))},
        het_art=0.22,
    ),
    "intrahepatic_cholangiocarcinoma": dict(
        count=((1, 2, 3), (0.7, 0.2, 0.1)), size=(0.25, 1.0), edge=0.15, lob=0.15, het=0.06,
        fat=(0.0, 0.0, 0.0), cirrhosis=0.1, rim_t=(0.25, 0.45), duct=0.45,
        ratio={T2: dict(core=(1.15, 1.8), rim=(1.5, 2.4)), DWI: dict(core=(1.0, 1.6), rim=(1.4, 2.3)),
               INP: dict(core=(0.5, 0.8)), PRE: dict(core=(0.5, 0.78))},
        enh={ART: dict(core=(0.0, 0.2), rim=(0.45, 0.9)),
             VEN: dict(core=(0.3, 0.55), rim=(0.4, 0.7)),
             DEL: dict(core=(0.55, 0.9), rim=(0.3, 0.5))},
    ),
    "hepatic_metastasis": dict(
        count=((1, 2, 3, 4), (0.3, 0.3, 0.25, 0.15)), size=(0.0, 0.85), edge=0.10, lob=0.10,
        het=0.06, fat=(0.0, 0.0, 0.0), rim_t=(0.25, 0.45), hypervascular=0.25, hypovascular=0.3,
        ratio={T2: dict(core=(1.4, 2.4), rim=(1.2, 1.7)), DWI: dict(core=(1.3, 2.0), rim=(1.7, 2.6)),
               INP: dict(core=(0.5, 0.8)), PRE: dict(core=(0.5, 0.78))},
        enh={ART: dict(core=(0.0, 0.2), rim=(0.45, 0.85)),
             VEN: dict(core=(0.1, 0.3), rim=(0.35, 0.6)),
             DEL: dict(core=(0.1, 0.3), rim=(0.15, 0.3))},
    ),
    "hepatic_abscess": dict(
        count=((1, 2, 3), (0.55, 0.3, 0.15)), size=(0.1, 0.95), edge=0.10, lob=0.10, het=0.05,
        fat=(0.0, 0.0, 0.0), rim_t=(0.2, 0.35), halo=(0.65, 0.3, 0.6), double=0.5,
        ratio={T2: dict(core=(2.4, 3.6), rim=(1.3, 1.8), halo=(1.1, 1.4)),
               DWI: dict(core=(1.8, 2.8), rim=(1.2, 1.6), halo=(1.05, 1.2)),
               INP: dict(core=(0.35, 0.6), rim=(0.6, 0.8)),
               PRE: dict(core=(0.3, 0.55), rim=(0.6, 0.8), halo=(0.9, 1.0))},
        enh={ART: dict(core=(0.0, 0.0), rim=(0.5, 0.9), cap=(0.1, 0.2), halo=(1.05, 1.25)),
             VEN: dict(core=(0.0, 0.03), rim=(0.5, 0.8), cap=(0.3, 0.5), halo=(1.0, 1.1)),
             DEL: dict(core=(0.0, 0.06), rim=(0.3, 0.65), cap=(0.35, 0.6), halo=(0.97, 1.03))},
    ),
}

# Per-case randomness shared by all classes.
CONSPICUITY = (0.38, 1.2)      # exponent on every lesion/liver ratio and factor on enhancement
ARTERIAL_TIMING = (0.35, 1.2)  # early vs late arterial acquisition: factor on arterial enhancement
DELAY_TIMING = (0.6, 1.2)      # 3-5 min delayed acquisition: factor on delayed enhancement
PHASE_JITTER = 0.12            # log-normal sigma of each phase's lesion contrast, independently
TISSUE_JITTER = 0.07           # log-normal sigma of each tissue's signal per phase (scanner)
