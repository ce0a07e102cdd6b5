"""Brain generator, reports: one report per sequence plus a global impression.

Worded from the planned and measured lesion facts (site, MNI centre, extents, signal ratios,
oedema, necrosis, ...) in varied radiologist phrasing: location by hemisphere and lobe from the
lesion's MNI coordinates (:func:`_where`), size from the mask extents as AP x LR x CC
(:func:`_dims`), T1 signal and enhancement words, oedema and mass effect. The global impression
names the diagnosis (meningioma, high-grade glioma, metastases) in about half of the cases,
otherwise it stays descriptive.
"""

from __future__ import annotations

import numpy as np

from medmap.data.sim.common import pick


# --------------------------------------------------------------------------------------------
# Location and size
# --------------------------------------------------------------------------------------------


def _side(x: float) -> str:
    return "right" if x > 5 else "left" if x < -5 else "midline"


def _lobe(x: float, y: float, z: float) -> str:
    if z < -18 and y < -48:
        return "cerebellar"
    if y < -72:
        return "occipital"
    if z < 6 and abs(x) > 28 and -72 <= y < 18:
        return "temporal"
    if y >= -22:
        return "frontal"
    return "parietal"


def _where(lesion: dict) -> str:
    x, y, z = lesion["centre_mni"]
    side, lobe = _side(x), _lobe(x, y, z)
    side = side if side != "midline" else "left" if x < 0 else "right"
    kind = lesion["site"]
    if kind == "convexity":
        return f"{side} {lobe} convexity" if lobe != "cerebellar" else f"{side} posterior fossa"
    if kind == "falx":
        return f"{side} parasagittal {lobe} region, attached to the falx"
    if kind == "skull_base":
        if abs(x) < 15:
            return "olfactory groove / planum sphenoidale"
        return f"{side} sphenoid wing" if y > -2 else f"{side} middle cranial fossa"
    if lobe == "cerebellar":
        return f"{side} cerebellar hemisphere"
    if kind == "junction":
        return f"{side} {lobe} lobe at the grey-white junction"
    deep = lesion.get("depth_mm", 0) > 25
    return f"{side} {lobe} {'deep ' if deep else ''}white matter"


def _dims(lesion: dict) -> str:
    a, b, c = lesion["size_mm"]  # (x, y, z) extents
    return f"{b:.0f} x {a:.0f} x {c:.0f} mm"


def _largest(lesions: list[dict]) -> dict:
    return max(lesions, key=lambda d: np.prod(d["size_mm"]))

# --------------------------------------------------------------------------------------------
# Wording
# --------------------------------------------------------------------------------------------


def _t1_word(rng, rel: float) -> str:
    if rel < 0.85:
        return pick(rng, ["hypointense", "mildly hypointense"])
    if rel < 1.05:
        return pick(rng, ["isointense", "near isointense", "iso- to slightly hypointense"])
    return pick(rng, ["slightly hyperintense", "mildly hyperintense"])


def _enh_word(rng, rel_wm: float) -> str:
    if rel_wm < 0.95:
        return pick(rng, ["faint", "mild"])
    if rel_wm < 1.25:
        return pick(rng, ["moderate", "definite"])
    return pick(rng, ["avid", "intense", "vivid"])


def _mass_effect(rng, les: dict, shift: float) -> str:
    if shift >= 3:
        return pick(rng, [f"Mass effect with {shift:.0f} mm midline shift.",
                          f"Midline shift measures {shift:.0f} mm.",
                          f"Resultant mass effect, {shift:.0f} mm of midline shift."])
    if les["R"] >= 12:
        return pick(rng, ["Local mass effect with effacement of the adjacent sulci.",
                          "Effacement of adjacent sulci; no midline shift.",
                          "Mild local mass effect without midline shift."])
    return pick(rng, ["No significant mass effect.", "No midline shift.",
                      "Minimal mass effect."])


def _oedema_phrase(rng, les: dict, seq: str) -> str:
    grade, mm = les["oedema"], les.get("oedema_mm", 0.0)
    where = pick(rng, ["surrounding", "perilesional", "adjacent"])
    if grade == "none":
        return pick(rng, ["No perilesional oedema.", "No surrounding signal abnormality.",
                          "No oedema in the adjacent parenchyma."])
    if grade in ("mild", "minimal"):
        return pick(rng, [f"Mild {where} {seq} hyperintensity, in keeping with oedema.",
                          f"Thin rim of {where} oedema.",
                          f"Minimal {where} vasogenic oedema."])
    if grade == "moderate":
        return pick(rng, [f"Moderate {where} vasogenic oedema (about {mm:.0f} mm).",
                          f"{where.capitalize()} oedema extending about {mm:.0f} mm into the "
                          "adjacent white matter."])
    return pick(rng, [
        f"Extensive {where} vasogenic oedema extending about {mm:.0f} mm along the white matter.",
        f"Marked {where} {seq} hyperintensity tracking through the white matter (about "
        f"{mm:.0f} mm), consistent with vasogenic oedema.",
        f"Large territory of finger-like vasogenic oedema, about {mm:.0f} mm beyond the mass.",
    ])


def _reports(rng, label: str, subtype: str, lesions: list[dict], shift: float) -> dict[str, str]:
    """Per-sequence reports plus a global impression, worded from the generated parameters."""
    main = _largest(lesions)
    loc = _where(main)
    size = _dims(main)
    me = _mass_effect(rng, main, shift)
    if label == "benign":
        rep = _benign_reports(rng, main, loc, size, me)
    else:
        rep = _malignant_reports(rng, subtype, lesions, main, loc, size, me)
    return {k: " ".join(v.split()) for k, v in rep.items()}  # tidy double spaces


def _benign_reports(rng, main: dict, loc: str, size: str, me: str) -> dict[str, str]:
    mass = pick(rng, ["extra-axial mass", "dural-based mass", "extra-axial lesion",
                      "broad-based extra-axial mass"])
    shape = pick(rng, ["well circumscribed", "well defined", "sharply marginated"])
    cleft = pick(rng, ["A CSF cleft separates it from the brain.", "CSF cleft sign is present.",
                       "Interface CSF cleft between the mass and the cortex."]) \
        if main.get("cleft") else ""
    calc = pick(rng, ["Internal foci of low signal, likely calcification.",
                      "Punctate internal signal voids (calcification)."]) \
        if main.get("calcified") else ""
    t1 = _t1_word(rng, main["t1_rel"])
    rep = {"T1WI": f"{shape.capitalize()} {mass} at the {loc}, measuring {size}, {t1} to grey "
                   f"matter on T1. {calc} {me}"}
    adj = _enh_word(rng, main["enh_rel"])
    if main["hetero"]:
        enh = pick(rng, [f"{adj.capitalize()} but heterogeneous enhancement with non-enhancing "
                         "internal foci",
                         f"{adj.capitalize()}, patchy enhancement with non-enhancing areas",
                         f"Heterogeneous, predominantly {adj} enhancement"])
    else:
        enh = pick(rng, [f"{adj.capitalize()} homogeneous enhancement",
                         f"{adj.capitalize()}, uniform enhancement",
                         f"Homogeneous, {adj} contrast enhancement"])
    tail = pick(rng, [" with an enhancing dural tail", ", with a dural tail",
                      " with adjacent dural thickening (dural tail)"]) if main.get("tail") else ""
    base = pick(rng, ["Broad dural base.", "Broad-based dural attachment.", "Dural-based."])
    rep["T1C"] = f"{enh} of the {size} {mass} at the {loc}{tail}. {base}"
    t2 = (pick(rng, ["hyperintense", "markedly hyperintense", "bright"]) if main.get("t2_bright")
          else pick(rng, ["iso- to slightly hyperintense", "isointense", "near isointense"]))
    rep["T2WI"] = (f"{mass.capitalize()} at the {loc} ({size}), {t2} to cortex on T2. {cleft} "
                   f"{calc} {_oedema_phrase(rng, main, 'T2')}")
    fl = pick(rng, ["isointense to slightly hyperintense", "mildly hyperintense", "isointense"])
    rep["T2FLAIR"] = pick(rng, [f"On FLAIR, the {size} {mass} at the {loc} is {fl}.",
                                f"FLAIR: {size} {mass} at the {loc}, {fl}."]) \
        + " " + _oedema_phrase(rng, main, "FLAIR")
    if rng.random() < 0.5:
        rep["global"] = pick(rng, [
            f"{size} extra-axial dural-based mass at the {loc}, most consistent with meningioma.",
            f"Meningioma at the {loc} ({size}).",
            f"Findings in keeping with a meningioma at the {loc}, measuring {size}."])
    else:
        rep["global"] = pick(rng, [
            f"Enhancing extra-axial mass at the {loc} ({size}). {me}",
            f"{size} dural-based enhancing lesion at the {loc}; no intra-axial abnormality.",
            f"Solitary extra-axial lesion at the {loc}, {size}, displacing the adjacent brain."])
    return rep


def _malignant_reports(rng, subtype: str, lesions: list[dict], main: dict, loc: str, size: str,
                       me: str) -> dict[str, str]:
    n = len(lesions)
    others = ""
    if n > 1:
        rest = [les for les in lesions if les is not main]
        others = pick(rng, ["Additional", "Further", "Also a"]) + " " + "; ".join(
            f"{_dims(les)} lesion in the {_where(les)}" for les in rest) + "."
    word = pick(rng, ["intra-axial mass", "intra-axial lesion", "parenchymal mass"])
    if main["necrosis"]:
        t1 = pick(rng, ["hypointense with a more hypointense necrotic centre",
                        "heterogeneously hypointense, centrally lower signal",
                        "low signal with a darker central component"])
        t2 = pick(rng, ["heterogeneously hyperintense with a fluid-bright necrotic centre",
                        "hyperintense with central fluid-like signal",
                        "mixed, predominantly high signal with central necrosis"])
        adj = _enh_word(rng, main["enh_rel"])
        enh = pick(rng, [f"Thick, irregular, {adj} peripheral (ring) enhancement around a "
                         "non-enhancing necrotic core",
                         f"{adj.capitalize()} irregular rim enhancement surrounding central "
                         "necrosis",
                         f"Nodular, irregular, {adj} ring enhancement with central "
                         "non-enhancement"])
    else:
        t1 = _t1_word(rng, main["t1_rel"]) + " to grey matter"
        t2 = (pick(rng, ["markedly hyperintense", "homogeneously hyperintense"])
              if main.get("t2_bright") else
              pick(rng, ["mildly hyperintense", "near isointense to cortex",
                         "slightly hyperintense"]))
        adj = _enh_word(rng, main["enh_rel"])
        enh = pick(rng, [f"Solid, fairly homogeneous {adj} enhancement",
                         f"{adj.capitalize()} nodular solid enhancement",
                         f"{adj.capitalize()} solid enhancement without necrosis"])
    blood = pick(rng, ["Foci of intrinsic T1 hyperintensity, in keeping with blood products.",
                       "Internal T1-bright foci suggest haemorrhage."]) \
        if main.get("haemorrhage") else ""
    many = (f"{n} " + pick(rng, ["lesions", "parenchymal lesions", "masses"]) + "; the largest "
            if n > 1 else "")
    rep = {
        "T1WI": f"{many}{word} in the {loc}, measuring {size}, {t1} on T1. {blood} {me} {others}",
        "T1C": f"{enh} of the {size} {word} in the {loc}. {others}",
        "T2WI": f"{word.capitalize()} in the {loc} ({size}), {t2}. "
                f"{_oedema_phrase(rng, main, 'T2')}",
        "T2FLAIR": f"FLAIR: {size} {word} in the {loc}. {_oedema_phrase(rng, main, 'FLAIR')} "
                   f"{others}",
    }
    rep["T1WI"] = rep["T1WI"][0].upper() + rep["T1WI"][1:]
    if rng.random() < 0.5:
        if subtype == "glioma":
            dx = pick(rng, ["most consistent with high-grade glioma (glioblastoma).",
                            "in keeping with a high-grade glioma.",
                            "suspicious for high-grade glioma."])
        elif n > 1:
            dx = pick(rng, ["most consistent with metastases.",
                            "in keeping with metastatic disease.",
                            "suggestive of multiple brain metastases."])
        else:
            dx = pick(rng, ["favouring a solitary metastasis; high-grade glioma less likely.",
                            "consistent with a metastasis."])
        rep["global"] = (f"{'Multiple' if n > 1 else 'Solitary'} enhancing intra-axial "
                         f"{'lesions' if n > 1 else 'lesion'}, the largest {size} in the {loc}, "
                         f"{dx}")
    else:
        total = f" {n} lesions in total." if n > 1 else ""
        rep["global"] = pick(rng, [
            f"{enh} in a {size} {word} of the {loc}. {_oedema_phrase(rng, main, 'FLAIR')}{total}",
            f"{'Multiple enhancing lesions' if n > 1 else 'Enhancing intra-axial mass'}, largest "
            f"{size} in the {loc}, with {main['oedema']} surrounding oedema. {me}",
        ])
    return rep
