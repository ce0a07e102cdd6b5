import copy

import torch

from medmap.data.datasets import CaseDataset, collate_cases
from medmap.data.manifest import Manifest
from medmap.data.preprocess import PreprocessConfig, Preprocessor
from medmap.losses.medmap import medmap_loss
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig


def _toy_batch(n: int, g: torch.Generator):
    """Class 0: a bright block in the first phase; class 1: the block in the second phase."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 2, 1, 32, 32, 32, generator=g)
    x[torch.arange(n), y, 0, 8:24, 8:24, 8:24] += 2.0
    return x, y


def test_tiny_model_learns_a_separable_toy_task():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(["A", "B"], ["left", "right"]),
                             torch.randn(2, 2, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    present = torch.ones(8, 2, dtype=torch.bool)
    epochs = 25
    for step in range(epochs):
        x, y = _toy_batch(8, g)
        out = model(x, present)
        f_t = model.text_features(torch.randn(8, 32, generator=g))
        # the paper's loss with its weights at the end of the ramp (lambda_c = 0.1)
        loss = medmap_loss(out["logits"], y, out["fusion"], f_t, epoch=epochs, max_epochs=epochs)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    model.eval()
    x, y = _toy_batch(32, torch.Generator().manual_seed(123))
    with torch.no_grad():
        acc = (model(x, torch.ones(32, 2, dtype=torch.bool))["logits"].argmax(1) == y).float().mean()
    assert acc >= 0.9, acc
    # the class-knowledge text guides the trained model: other prompt embeddings, other output
    with torch.no_grad():
        before = model(x, torch.ones(32, 2, dtype=torch.bool))["logits"]
        model.class_prompts.copy_(torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(7)))
        after = model(x, torch.ones(32, 2, dtype=torch.bool))["logits"]
    assert (before - after).abs().max() > 1e-3, (before - after).abs().max()


def test_predictions_ignore_reports_and_labels(tiny_sim):
    torch.manual_seed(0)
    manifest = Manifest.load(tiny_sim).select(organ="liver")
    altered = copy.deepcopy(manifest)
    for c in altered.cases:
        c.reports = {m: "completely different text" for m in c.modalities} if c.reports else {}
        c.label = None
    stripped = copy.deepcopy(manifest)
    for c in stripped.cases:
        c.reports, c.label = {}, "hepatic_cyst"
    mods = ["T2WI", "C+A", "C+V"]
    model = MedMAPClassifier(MedMAPConfig.tiny(mods, [f"c{i}" for i in range(7)]),
                             torch.randn(3, 7, 32))
    model.eval()
    pre = Preprocessor(PreprocessConfig(spacing=None, size=(32, 32, 32)))
    probs = []
    for m in (manifest, altered, stripped):
        batch = collate_cases([CaseDataset(m, pre, modalities=mods)[i] for i in range(3)])
        with torch.no_grad():
            probs.append(model(batch["images"], batch["present"])["probs"])
    assert torch.equal(probs[0], probs[1]) and torch.equal(probs[0], probs[2])
