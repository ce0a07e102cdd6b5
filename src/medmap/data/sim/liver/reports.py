"""Liver generator, reports: one report per sequence plus a global impression.

Reports are worded from the case's drawn appearance (the ``look`` of :mod:`.lesions`) and from
the lesion/liver signal measured on the rendered, pre-artefact image (``info["stats"]``):
location (Couinaud segment), size, count, signal relative to liver (:data:`_INT_WORDS`),
enhancement pattern per contrast phase (:func:`_enhancement_pattern`), washout / capsule / fat
drop / steatosis / cirrhosis / duct dilatation where present, with varied templates. The global
impression (:func:`_impression`) names the diagnosis, gives a differential including it
(:data:`_CONFUSABLE`), or stays descriptive.
"""

from __future__ import annotations

from medmap.data.sim.common import pick
from medmap.data.sim.liver.specs import ART, DEL, DWI, INP, OUTP, PHASES, PRE, T2, VEN

_DX_SYNONYM = {
    "hepatic_hemangioma": "hepatic hemangioma",
    "intrahepatic_cholangiocarcinoma": "intrahepatic cholangiocarcinoma (ICC)",
    "hepatic_abscess": "hepatic abscess",
    "hepatic_metastasis": "hepatic metastasis",
    "hepatic_cyst": "hepatic cyst",
    "focal_nodular_hyperplasia": "focal nodular hyperplasia (FNH)",
    "hepatocellular_carcinoma": "hepatocellular carcinoma (HCC)",
}
_CONFUSABLE = {
    "hepatic_hemangioma": ("hepatic_cyst", "focal_nodular_hyperplasia", "hepatic_metastasis"),
    "intrahepatic_cholangiocarcinoma": ("hepatic_metastasis", "hepatocellular_carcinoma"),
    "hepatic_abscess": ("hepatic_metastasis", "hepatic_cyst", "intrahepatic_cholangiocarcinoma"),
    "hepatic_metastasis": ("intrahepatic_cholangiocarcinoma", "hepatic_abscess",
                           "hepatocellular_carcinoma"),
    "hepatic_cyst": ("hepatic_hemangioma", "hepatic_abscess"),
    "focal_nodular_hyperplasia": ("hepatocellular_carcinoma", "hepatic_hemangioma"),
    "hepatocellular_carcinoma": ("focal_nodular_hyperplasia", "hepatic_metastasis",
                                 "intrahepatic_cholangiocarcinoma"),
}


_INT_WORDS = (
    (2.6, ("markedly hyperintense", "strongly hyperintense", "very bright")),
    (1.6, ("hyperintense", "clearly hyperintense", "moderately hyperintense")),
    (1.15, ("mildly hyperintense", "slightly hyperintense")),
    (0.87, ("isointense", "near-isointense", "approximately isointense")),
    (0.65, ("mildly hypointense", "slightly hypointense")),
    (0.42, ("hypointense", "moderately hypointense")),
    (-1.0, ("markedly hypointense", "very hypointense")),
)
_ENH_WORDS = (
    (1.35, ("clearly hyperenhancing", "markedly hyperenhancing")),
    (1.1, ("mildly hyperenhancing", "slightly hyperenhancing")),
    (0.9, ("isoenhancing", "isointense")),
    (0.6, ("hypoenhancing", "mildly hypointense")),
    (-1.0, ("markedly hypoenhancing", "clearly hypointense")),
)
_NUM = {2: "Two", 3: "Three", 4: "Four"}


def _word(rng, table, ratio: float) -> str:
    for thr, words in table:
        if ratio >= thr:
            return pick(rng, list(words))
    return pick(rng, list(table[-1][1]))


def _reports(rng, label: str, look: dict, info: dict) -> dict[str, str]:
    fl = look["flags"]
    st = info["stats"]
    ref = info["liver_ref"]
    n, d, seg, lobe = info["n"], info["diam_mm"], info["segment"], info["lobe"]
    seg_txt = "the caudate lobe (segment I)" if seg == "I" else pick(
        rng, [f"segment {seg}", f"segment {seg} ({lobe})", f"segment {seg} of the "
              f"{'right' if lobe.startswith('right') else 'left'} lobe"])
    ratio = {ph: st[ph]["mean"] / ref[ph] for ph in PHASES}

    def subj(cap: bool = True) -> tuple[str, str]:
        if n == 1:
            s = pick(rng, [f"a {d} mm lesion in {seg_txt}", f"a {d} mm focal lesion in {seg_txt}",
                           f"the {d} mm lesion in {seg_txt}", f"a {d} mm mass in {seg_txt}"])
            verb = "is"
        else:
            num = _NUM[n].lower()
            opts = [f"{num} lesions, the largest {d} mm in {seg_txt},",
                    f"{num} focal lesions, the largest measuring {d} mm in {seg_txt},"]
            if n > 2:
                opts.append(f"multiple ({n}) lesions, the dominant one {d} mm in {seg_txt},")
            s = pick(rng, opts)
            verb = "are"
        return (s[0].upper() + s[1:] if cap else s), verb

    rep: dict[str, str] = {}
    # T2WI
    s, v = subj()
    extras = []  # noun phrases, rendered "with A, B and C"
    if label == "hepatic_cyst":
        extras.append(pick(rng, ["sharp, well-defined margins", "a thin imperceptible wall",
                                 "smooth, sharp margins"]))
    elif label == "hepatic_hemangioma":
        extras.append(pick(rng, ["lobulated margins", "well-circumscribed lobulated borders"]))
    elif label == "intrahepatic_cholangiocarcinoma":
        extras.append(pick(rng, ["ill-defined infiltrative margins", "irregular margins"]))
    if fl["scar"]:
        extras.append(pick(rng, ["a T2-hyperintense central scar", "a bright central scar"]))
    if fl["rim_t"] > 0 and label != "hepatic_abscess":
        peri_hi = st[T2]["peri"] > st[T2]["core"] * 1.05
        extras.append("a brighter periphery" if peri_hi else "a brighter centre")
    if fl["halo"]:
        extras.append(pick(rng, ["a T2-hyperintense halo of perilesional oedema",
                                 "surrounding perilesional oedema"]))
    if label == "hepatocellular_carcinoma":
        extras.append(pick(rng, ["heterogeneous internal signal", "mildly heterogeneous signal"]))
    t2 = f"{s} {v} {_word(rng, _INT_WORDS, ratio[T2])} on T2-weighted images"
    if extras:
        t2 += " with " + (extras[0] if len(extras) == 1 else
                          ", ".join(extras[:-1]) + " and " + extras[-1])
    t2 += "."
    if info["cirrhosis"]:
        t2 += " " + pick(rng, ["The liver is nodular with a coarse parenchymal texture, in keeping "
                               "with cirrhosis.",
                               "Background cirrhotic liver morphology with splenomegaly."])
    if fl["duct"]:
        t2 += " " + pick(rng, ["A dilated peripheral bile duct is seen upstream of the lesion.",
                               "There is upstream intrahepatic biliary dilatation."])
    rep[T2] = t2
    # DWI
    s, v = subj()
    w = _word(rng, _INT_WORDS, ratio[DWI])
    tail = ""
    if ratio[DWI] > 1.5:
        tail = pick(rng, [", consistent with restricted diffusion",
                          ", indicating diffusion restriction"])
    elif ratio[DWI] < 1.0:
        tail = pick(rng, [", without restricted diffusion", "; no diffusion restriction"])
    if fl["rim_t"] > 0 and st[DWI]["peri"] > st[DWI]["core"] * 1.1:
        tail += pick(rng, [", with a target appearance", ", with a brighter rim"])
    elif label == "hepatic_abscess" and st[DWI]["core"] > max(st[DWI]["peri"], 1.6 * ref[DWI]):
        tail += pick(rng, [", most marked centrally", ", with very high central signal"])
    rep[DWI] = f"{s} {v} {w} on diffusion-weighted images (b = 800 s/mm²){tail}."
    # InPhase
    s, v = subj(cap=False)
    w = _word(rng, _INT_WORDS, ratio[INP])
    rep[INP] = pick(rng, [f"On in-phase T1-weighted images {s} {v} {w} relative to liver.",
                          f"In-phase GRE: {s} {v} {w}."])
    # OutPhase
    s, v = subj()
    drop = 1.0 - st[OUTP]["mean"] / max(st[INP]["mean"], 1e-6) / info["outin_base"]
    if drop > 0.12:
        tail = pick(rng, [" with signal loss relative to in-phase images, indicating intralesional fat",
                          ", showing signal drop on opposed-phase imaging (microscopic fat)"])
    else:
        tail = pick(rng, [" without signal loss compared with in-phase images",
                          "; no signal drop on opposed-phase imaging"])
    out = f"{s} {v} {_word(rng, _INT_WORDS, ratio[OUTP])} on opposed-phase images{tail}."
    if info["steatosis"]:
        out += " " + pick(rng, ["The background liver loses signal on opposed-phase images, "
                                "consistent with steatosis.",
                                "Diffuse hepatic steatosis."])
    rep[OUTP] = out
    # C-pre
    s, v = subj(cap=False)
    w = _word(rng, _INT_WORDS, ratio[PRE])
    rep[PRE] = pick(rng, [f"On pre-contrast fat-suppressed T1-weighted images {s} {v} {w}.",
                          f"Pre-contrast T1: {s} {v} {w} to liver."])
    if fl["complicated"]:
        rep[PRE] += " " + pick(rng, ["The relatively high T1 signal suggests proteinaceous or "
                                     "haemorrhagic content.", "Intrinsic T1 signal is higher than "
                                     "expected for simple fluid."])
    # contrast phases
    for ph, name in ((ART, "arterial"), (VEN, "portal venous"), (DEL, "delayed")):
        s, _ = subj()
        pat = _enhancement_pattern(rng, label, ph, name, look, info, ratio)
        enhancing = pat is not None
        if pat is None:
            pat = pick(rng, [f"shows no enhancement in the {name} phase",
                             f"does not enhance in the {name} phase",
                             f"remains non-enhancing in the {name} phase"])
        if n > 1:
            first, _, rest = pat.partition(" ")
            pat = f"{_PLURAL_VERB.get(first, first)} {rest}"
        if not enhancing:
            rep[ph] = f"{s} {pat}."
        else:
            rel = _word(rng, _ENH_WORDS, ratio[ph])
            rep[ph] = f"{s} {pat} ({rel} relative to liver in the {name} phase)."
    rep["global"] = _impression(rng, label, n, d, seg, info)
    return rep


_PLURAL_VERB = {"shows": "show", "demonstrates": "demonstrate", "fades": "fade", "remains": "remain",
                "fills": "fill", "is": "are", "retains": "retain", "does": "do"}


def _enhancement_pattern(rng, label: str, ph: str, name: str, look: dict, info: dict,
                         ratio: dict[str, float]) -> str | None:
    """Verb phrase (singular) describing the lesion's enhancement in contrast phase ``ph``;
    None when the lesion does not enhance (measured against its own C-pre signal)."""
    fl, st, ref = look["flags"], info["stats"], info["liver_ref"]
    enh = (st[ph]["mean"] - st[PRE]["mean"]) / ref[PRE]
    if enh < 0.06 and st[ph]["peri"] - st[PRE]["peri"] < 0.06 * ref[PRE]:
        return None
    if label == "hepatic_hemangioma":
        blood = st[ph]["peri"] / info["blood_ref"][ph]
        pool = ", following the blood pool" if 0.8 < blood < 1.25 else ", with persistent enhancement"
        if fl["flash"]:
            return ("shows homogeneous flash-filling enhancement" if ph == ART else
                    "retains contrast" + pool)
        if ph == ART:
            return pick(rng, ["shows peripheral nodular discontinuous enhancement",
                              "demonstrates peripheral, discontinuous nodular enhancement"])
        if ph == VEN:
            return pick(rng, ["shows progressive centripetal fill-in",
                              "demonstrates centripetal progression of the nodular enhancement"])
        pat = ("shows near-complete fill-in" if look["enh"][ph]["fill"] < 0.95 else
               "is completely filled in")
        return pat + pool
    if label == "focal_nodular_hyperplasia":
        if ph == ART:
            pat = ("shows intense homogeneous arterial enhancement" if ratio[ph] >= 1.3 else
                   "shows homogeneous arterial enhancement" if ratio[ph] >= 1.05 else
                   "shows homogeneous arterial enhancement, only near-isointense to liver")
            return pat + (", sparing the central scar" if fl["scar"] else "")
        if ph == VEN:
            return "fades towards the background liver"
        return "is similar to the background liver" + (
            ", with delayed enhancement of the central scar" if fl["scar"] else "")
    if label == "hepatocellular_carcinoma":
        if ph == ART:
            if ratio[ph] >= 1.1:
                return pick(rng, ["shows heterogeneous non-rim arterial phase hyperenhancement",
                                  "demonstrates heterogeneous arterial hyperenhancement"])
            return "shows heterogeneous arterial enhancement without definite hyperenhancement"
        core = st[ph]["core"] / ref[ph]  # washout judged inside the capsule
        pat = "shows washout" if core < 0.92 else "shows no definite washout"
        if fl["capsule"]:
            pat += pick(rng, [" with an enhancing capsule", " and an enhancing peripheral capsule"])
        return pat
    if label == "intrahepatic_cholangiocarcinoma":
        if ph == ART:
            return pick(rng, ["shows irregular peripheral rim enhancement",
                              "shows rim-like arterial enhancement"])
        if ph == VEN:
            return "shows progressive enhancement extending centrally"
        return pick(rng, ["shows progressive central delayed enhancement",
                          "fills in centrally on delayed images, reflecting fibrous stroma"])
    if label == "hepatic_metastasis":
        if ph == ART:
            if fl["hypervascular"]:
                return ("shows avid arterial enhancement" if ratio[ph] >= 1.1 else
                        "shows diffuse arterial enhancement")
            if fl["hypovascular"]:
                return "shows only faint peripheral enhancement"
            return pick(rng, ["shows rim enhancement",
                              "shows continuous peripheral rim (target) enhancement"])
        if ph == VEN:
            return ("remains hypoenhancing with a persistent enhancing rim" if ratio[ph] < 0.92 else
                    "shows persistent rim enhancement")
        return ("shows peripheral washout" if st[ph]["peri"] < st[ph]["core"] else
                "remains hypoenhancing")
    if label == "hepatic_abscess":
        if ph == ART:
            pat = "shows " + ("a thick double-layered rim enhancement" if fl["double_rim"] else
                              "thick rim enhancement of the wall") + ", with a non-enhancing centre"
            return pat + (" and transient perilesional hyperenhancement" if fl["halo"] else "")
        return pick(rng, ["shows persistent enhancement of the abscess wall around a non-enhancing "
                          "fluid centre", "shows a persistently enhancing wall and a fluid centre"])
    return "shows enhancement"


_PLURAL_DX = {"hepatic hemangioma": "hepatic hemangiomas", "hepatic abscess": "hepatic abscesses",
              "hepatic metastasis": "hepatic metastases", "hepatic cyst": "hepatic cysts"}


def _impression(rng, label: str, n: int, d: int, seg: str, info: dict) -> str:
    """Global impression: diagnosis (~45%), differential (~25%) or descriptive only (~30%)."""
    desc = _DX_SYNONYM[label]
    les = "lesion" if n == 1 else "lesions"
    summary = (f"Solitary focal liver lesion, {d} mm in segment {seg}." if n == 1 else
               f"{_NUM[n]} focal liver lesions, largest {d} mm in segment {seg}.")
    u = rng.random()
    if u < 0.45:
        mode = "diagnosis"
        dx = _PLURAL_DX.get(desc, desc) if n > 1 else desc
        imp = pick(rng, [f"Findings are consistent with {dx}.",
                         f"Imaging features are typical of {dx}.",
                         f"Impression: {dx}.", f"Most likely {dx}."])
    elif u < 0.7:
        mode = "differential"
        others = list(_CONFUSABLE[label])
        k = 1 + int(rng.random() < 0.5) if len(others) > 1 else 1
        chosen = [others[i] for i in rng.permutation(len(others))[:k]] + [label]
        names = [_DX_SYNONYM[chosen[i]] for i in rng.permutation(len(chosen))]
        lst = ", ".join(names[:-1]) + " and " + names[-1]
        imp = pick(rng, [f"Differential diagnosis includes {lst}.",
                         f"Differential considerations: {lst}."])
    else:
        mode = "descriptive"
        imp = pick(rng, [f"Indeterminate focal liver {les}; further characterisation recommended.",
                         f"Focal liver {les} of uncertain nature; correlation with clinical history "
                         "and follow-up imaging advised.",
                         f"Focal hepatic {les} as described; tissue sampling or follow-up may be "
                         "considered."])
    info["impression"] = mode
    return summary + " " + imp


