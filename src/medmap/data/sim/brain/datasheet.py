"""Brain generator, datasheet: the brain section of DATASHEET.md (:data:`DATASHEET`).

Anatomy, sequences, the two classes' simulated signatures, their designed overlap and the
reports, in prose; the numbers quoted match :data:`~.specs.P` and the generator.
"""

from __future__ import annotations

DATASHEET = """
## Brain

**Anatomy.** Real head anatomy from the MNI152 (ICBM 2009a, symmetric) T1 template, brain mask
(template > 0.2, as `nilearn.datasets.load_mni152_brain_mask`) and grey / white-matter
probability maps shipped inside nilearn, read offline from the package files. They are
resampled once per process to a `size`^3 cube of side 216 mm centred on MNI (0, -17, 8) (RAS
voxel order: axis 0 = x left->right, 1 = y posterior->anterior, 2 = z inferior->superior;
spacing = 216 mm / size, e.g. 3.4 mm at 64, 4.5 mm at 48). CSF = brain mask - GM - WM; outside
the mask a layered shell is grown by distance (extra-axial CSF, dura, inner table, diploe, outer
table, scalp; about 15 mm, smoothly varying skull thickness), plus the falx, superior sagittal
and transverse sinuses, sulcal cortical vessels and choroid plexus. Each subject is warped by a
random smooth displacement field (1.5-3 mm std) and a global / per-axis scaling (about +-7 %),
and every lesion pushes the surrounding brain away (volume-conserving radial displacement that
spares the skull), so no two subjects share anatomy. The template volume ends at MNI z = -72
(lower brainstem), so the head is closed below it.

**Sequences.** `T1WI`, `T1C`, `T2WI`, `T2FLAIR` (DWI / ADC are not simulated) are
partial-volume mixtures of per-tissue signals (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR:
CSF nulled, GM > WM; T1C: T1 plus enhancing dura, sinuses, vessels and choroid plexus).
Protocol variability per case and sequence: tissue-signal jitter (~8 %), global gain (~10 %),
fat suppression (35 % of sequences: dark marrow and scalp), imperfect FLAIR CSF nulling. Then
the shared artefacts (`apply_artefacts`, reference `T1WI`): blur, bias field, Rician noise and
misregistration of T1C / T2WI / T2FLAIR. The lesion mask (enhancing tumour + necrosis, not
oedema, not the dural tail) lies in the unshifted `T1WI` grid.

**benign (meningioma-like).** Extra-axial dome with a flat base on the dura at the convexity
(50 %), along the falx (25 %) or at the skull base (olfactory groove / planum, sphenoid wing,
middle fossa; 25 %), from flat en-plaque to globular (indenting the brain through a narrow
attachment); radius 8-22 mm; pushes the brain away from the dural attachment. T1 hypo- to
slightly hyperintense to grey matter (0.65-1.2 x GM, same range as malignant tumour); T1C avid
enhancement (T1C / T1 ratio 2.3-2.8), homogeneous in 70 %, patchy with calcified (dark on all
sequences) foci in 30 %; dural tail 60 %; CSF cleft 35 %; T2 iso in 80 %, bright in 20 %;
oedema none 55 %, mild 35 %, moderate 10 %.

**malignant.** High-grade glioma (50 %): one larger (radius 12-22 mm), lobulated white-matter
mass, superficial reaching the cortex (40 %), periventricular (25 %) or deep (35 %); ring
enhancement around necrosis in 55 % (else solid, patchy). Metastases (50 %): 1 (60 %), 2 (25 %)
or 3 (15 %) rounder lesions at the grey-white junction of cerebrum or cerebellum, radius 6-15 mm;
ring enhancement (larger ones) in 50 %, else solid. Enhancement is less intense than a
meningioma's (T1C / T1 1.6-2.1); necrosis is darker on T1, non-enhancing on T1C and usually
brighter on T2; solid tumour T2-bright in 60 %; T1-bright haemorrhagic foci in 30 %.
Vasogenic oedema, bright on FLAIR (and T2), dark on T1, spreads finger-like through the white
matter (cortex relatively spared): extensive (15-40 mm) in 60 %, minimal otherwise.

**Overlap (by design).** Each cue is class-typical but neither necessary nor exclusive, and the
cues are drawn independently: patchy meningiomas vs solid malignant lesions on T1C; meningioma
oedema vs oedema-poor malignant lesions on FLAIR; T2-bright meningiomas vs T2-iso tumours on
T2; superficial gliomas / cortical metastases and globular or falcine meningiomas blur the
intra- vs extra-axial location; tumour T1 has the same range in both classes, so the
enhancement ratio needs T1C together with T1WI. Every single sequence is therefore ambiguous
and combining them helps: on `benchmarks/sim_separability.py --organ brain --cases 200
--size 48 --seed 0` (logistic regression on lesion statistics) single sequences score 80-82 %
and all four together 91 % (seeds 1-4: singles 76-88 %, all 91-97 %, gap 9.5-16.5 points).
The knobs are in `medmap.data.sim.brain.P`.

**Reports.** One per sequence, describing what that sequence shows (location by hemisphere and
lobe from the lesion's MNI coordinates, size in mm from the mask extents as AP x LR x CC,
signal, enhancement, oedema, mass effect) in varied radiologist wording; the global impression
names the diagnosis (meningioma, high-grade glioma, metastases) in about half of the cases,
otherwise it stays descriptive.
"""
