"""Fixed, documented vocabularies: which modalities and classes each organ has.

Modality names are canonical spellings; importers map dataset-specific names (e.g. LLD-MMRI's
``"In Phase"``) to them through :data:`MODALITY_ALIASES`.

Example:
    >>> ORGANS["liver"].modalities[:2]
    ('T2WI', 'DWI')
    >>> ORGANS["brain"].class_index("malignant")
    1
"""

from __future__ import annotations

from dataclasses import dataclass

from medmap.config import UserError


@dataclass(frozen=True)
class OrganSpec:
    """Modalities and class names of one organ's abnormality-detection task."""

    name: str
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    class_descriptions: tuple[str, ...]

    def class_index(self, label: str | int) -> int:
        """Index of ``label`` (a class name or an integer index); ValueError if unknown."""
        if isinstance(label, bool):
            raise UserError(f"label {label!r} is a boolean, expected a class name or index")
        if isinstance(label, int):
            if 0 <= label < len(self.classes):
                return label
            raise UserError(
                f"label index {label} out of range for organ {self.name!r} "
                f"(0..{len(self.classes) - 1}: {', '.join(self.classes)})"
            )
        if label in self.classes:
            return self.classes.index(label)
        raise UserError(
            f"label {label!r} is not a class of organ {self.name!r}; "
            f"use one of: {', '.join(self.classes)}"
        )


LIVER = OrganSpec(
    name="liver",
    modalities=("T2WI", "DWI", "InPhase", "OutPhase", "C-pre", "C+A", "C+V", "C+Delay"),
    # LLD-MMRI label order 0..6
    classes=(
        "hepatic_hemangioma",
        "intrahepatic_cholangiocarcinoma",
        "hepatic_abscess",
        "hepatic_metastasis",
        "hepatic_cyst",
        "focal_nodular_hyperplasia",
        "hepatocellular_carcinoma",
    ),
    class_descriptions=(
        "hepatic hemangioma",
        "intrahepatic cholangiocarcinoma",
        "hepatic abscess",
        "hepatic metastasis",
        "hepatic cyst",
        "focal nodular hyperplasia",
        "hepatocellular carcinoma",
    ),
)

BRAIN = OrganSpec(
    name="brain",
    modalities=("T1WI", "T1C", "T2WI", "T2FLAIR", "DWI", "ADC"),
    classes=("benign", "malignant"),
    class_descriptions=("benign tumour", "malignant tumour"),
)

ORGANS: dict[str, OrganSpec] = {LIVER.name: LIVER, BRAIN.name: BRAIN}

# Dataset-specific spellings -> canonical modality names.
MODALITY_ALIASES: dict[str, str] = {
    "In Phase": "InPhase",
    "Out Phase": "OutPhase",
    "T1": "T1WI",
    "T1w": "T1WI",
    "t1n": "T1WI",
    "T1CE": "T1C",
    "T1Gd": "T1C",
    "t1c": "T1C",
    "T2": "T2WI",
    "T2w": "T2WI",
    "t2w": "T2WI",
    "FLAIR": "T2FLAIR",
    "T2-FLAIR": "T2FLAIR",
    "t2f": "T2FLAIR",
}

SPLITS = ("train", "val", "test")

# Reserved report key for a case-level (not sequence-specific) report.
GLOBAL_REPORT = "global"


def get_organ(name: str) -> OrganSpec:
    """The :class:`OrganSpec` called ``name``; ValueError naming the known organs otherwise."""
    try:
        return ORGANS[name]
    except KeyError:
        raise UserError(f"unknown organ {name!r}; known organs: {', '.join(ORGANS)}") from None
