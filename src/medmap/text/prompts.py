"""Default text prompts: one per MRI modality (CSA guidance) and one per class (KL fallback).

Example:
    >>> modality_prompt("C+A", "liver")
    'arterial phase contrast-enhanced T1-weighted MRI of the liver'
"""

from __future__ import annotations

from medmap.data.vocab import get_organ

MODALITY_DESCRIPTIONS: dict[str, str] = {
    "T2WI": "T2-weighted",
    "DWI": "diffusion-weighted",
    "InPhase": "in-phase T1-weighted",
    "OutPhase": "opposed-phase T1-weighted",
    "C-pre": "pre-contrast T1-weighted",
    "C+A": "arterial phase contrast-enhanced T1-weighted",
    "C+V": "portal venous phase contrast-enhanced T1-weighted",
    "C+Delay": "delayed phase contrast-enhanced T1-weighted",
    "T1WI": "T1-weighted",
    "T1C": "contrast-enhanced T1-weighted",
    "T2FLAIR": "T2 FLAIR",
    "ADC": "apparent diffusion coefficient map",
}


def modality_prompt(modality: str, organ: str) -> str:
    """The prompt describing ``modality`` of ``organ`` (e.g. "T2-weighted MRI of the brain")."""
    return f"{MODALITY_DESCRIPTIONS.get(modality, modality)} MRI of the {organ}"


def class_prompt(class_name: str, organ: str) -> str:
    """A sentence naming the class, used as ``f_t`` when a case has no report."""
    spec = get_organ(organ)
    desc = spec.class_descriptions[spec.classes.index(class_name)]
    return f"MRI of the {organ} showing a {desc}."
