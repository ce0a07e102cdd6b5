"""Class knowledge: how each lesion class looks on each MRI sequence, and its names.

One YAML file (``configs/class-knowledge.yaml``, shipped inside the package too) and one loader,
:func:`load_class_knowledge`. Everything that puts class language into a model reads it:

* MedMAP's CSA text guidance: per sequence, each class's appearance sentences, embedded once by
  the frozen text encoder (:meth:`ClassKnowledge.appearance_prompts`);
* zero-shot classification: per sequence the same appearance prompts, and per case the
  diagnosis-name prompts (:meth:`ClassKnowledge.name_prompts`: every ``name_templates`` entry
  filled with every name); the negated prompts are for the positive / negative scoring option.

File format (version 1)::

    version: 1
    organs:
      liver:
        name_templates: ["Findings are consistent with {name}.", ...]
        negative_templates: ["No evidence of {name}.", ...]
        classes:
          hepatic_cyst:
            names: ["hepatic cyst", "simple liver cyst"]
            appearance:
              T2WI: ["The lesion is markedly hyperintense with sharp, well-defined margins.", ...]
              ...

Example:
    >>> kn = load_class_knowledge(organ="liver")
    >>> len(kn.classes), len(kn.appearance_prompts("C+A")["hepatic_hemangioma"]) >= 3
    (7, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medmap.config import UserError
from medmap.data.vocab import get_organ

__all__ = ["ClassKnowledge", "load_class_knowledge", "DEFAULT_KNOWLEDGE_FILE",
           "KnowledgeFileError"]

# The copy inside the package (a link to configs/class-knowledge.yaml in a checkout).
DEFAULT_KNOWLEDGE_FILE = Path(__file__).with_name("class-knowledge.yaml")


class KnowledgeFileError(UserError):
    """A class-knowledge file does not fit the format; the message names the entry and fix."""


@dataclass(frozen=True)
class ClassKnowledge:
    """The class knowledge of one organ (see the module doc)."""

    organ: str
    classes: tuple[str, ...]
    names: dict[str, tuple[str, ...]]
    appearance: dict[str, dict[str, tuple[str, ...]]]     # class -> modality -> sentences
    name_templates: tuple[str, ...]
    negative_templates: tuple[str, ...]
    source: str = ""

    def appearance_prompts(self, modality: str) -> dict[str, list[str]]:
        """``{class: sentences}`` describing each class on ``modality``; a
        :class:`KnowledgeFileError` naming the class when one has none."""
        missing = [c for c in self.classes if not self.appearance[c].get(modality)]
        if missing:
            raise KnowledgeFileError(
                f"{self.source}: organs.{self.organ}.classes.<class>.appearance.{modality}: "
                f"no sentences for {missing}; add report-style sentences for {modality}")
        return {c: list(self.appearance[c][modality]) for c in self.classes}

    def embed_appearance(self, encoder, modalities: list[str]):
        """(M, C, T) torch tensor: per modality and class, the mean of the frozen text
        encoder's embeddings of the class's appearance sentences (``encoder.encode``)."""
        import torch

        per = [self.appearance_prompts(m) for m in modalities]
        flat = [s for p in per for c in self.classes for s in p[c]]
        emb = encoder.encode(flat).float().cpu()                        # (S, T)
        out, i = torch.zeros(len(modalities), len(self.classes), emb.shape[1]), 0
        for mi, p in enumerate(per):
            for ci, c in enumerate(self.classes):
                n = len(p[c])
                out[mi, ci] = emb[i:i + n].mean(0)
                i += n
        return out

    def name_prompts(self) -> dict[str, list[str]]:
        """``{class: every name template filled with every name of the class}``."""
        return {c: _fill(self.name_templates, self.names[c]) for c in self.classes}

    def negative_prompts(self) -> dict[str, list[str]]:
        """``{class: every negative template filled with every name}`` (positive / negative
        scoring option of zero-shot classification)."""
        return {c: _fill(self.negative_templates, self.names[c]) for c in self.classes}


def _fill(templates: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(t.format(name=n) for t in templates for n in names))


def _strings(v: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        problems.append(f"{where}: expected a list of non-empty sentences")
        return ()
    return tuple(dict.fromkeys(x.strip() for x in v))


def load_class_knowledge(source: str | Path | dict | None = None,
                         organ: str = "liver") -> ClassKnowledge:
    """The class knowledge of ``organ`` from a YAML path, a parsed dict, or None (the file
    shipped with medmap). Every problem of the organ's entry is listed in one
    :class:`KnowledgeFileError` (entry path and fix)."""
    spec = get_organ(organ)
    if isinstance(source, dict):
        doc, name = source, "<class knowledge>"
    else:
        path = Path(source) if source is not None else DEFAULT_KNOWLEDGE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"class-knowledge file {path} not found; pass a YAML file in "
                                    "the format of configs/class-knowledge.yaml")
        doc, name = yaml.safe_load(path.read_text(encoding="utf-8")), str(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("organs"), dict):
        raise KnowledgeFileError(f"{name}: needs a top-level 'organs' mapping (see "
                                 "configs/class-knowledge.yaml)")
    odoc = doc["organs"].get(organ)
    if not isinstance(odoc, dict):
        raise KnowledgeFileError(f"{name}: organs.{organ}: missing; the file has "
                                 f"{sorted(doc['organs'])}")
    problems: list[str] = []
    where = f"{name}: organs.{organ}"
    templates = _strings(odoc.get("name_templates"), f"{where}.name_templates", problems)
    negatives = _strings(odoc.get("negative_templates") or [], f"{where}.negative_templates",
                         problems) if odoc.get("negative_templates") is not None else ()
    for t in templates + negatives:
        if "{name}" not in t:
            problems.append(f"{where}: template {t!r} has no {{name}} placeholder")
    cdoc = odoc.get("classes") or {}
    unknown = sorted(set(cdoc) - set(spec.classes))
    if unknown:
        problems.append(f"{where}.classes: {unknown} are not {organ} classes "
                        f"({', '.join(spec.classes)})")
    names: dict[str, tuple[str, ...]] = {}
    appearance: dict[str, dict[str, tuple[str, ...]]] = {}
    for c in spec.classes:
        entry = cdoc.get(c)
        if not isinstance(entry, dict):
            problems.append(f"{where}.classes.{c}: missing; add its names and appearance")
            names[c], appearance[c] = (), {}
            continue
        names[c] = _strings(entry.get("names"), f"{where}.classes.{c}.names", problems)
        app = entry.get("appearance") or {}
        bad = sorted(set(app) - set(spec.modalities))
        if bad:
            problems.append(f"{where}.classes.{c}.appearance: {bad} are not {organ} modalities "
                            f"({', '.join(spec.modalities)})")
        appearance[c] = {m: _strings(app[m], f"{where}.classes.{c}.appearance.{m}", problems)
                         for m in spec.modalities if m in app}
    if problems:
        raise KnowledgeFileError("; ".join(problems))
    return ClassKnowledge(organ, tuple(spec.classes), names, appearance, templates, negatives,
                          name)
