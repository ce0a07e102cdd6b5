"""Every MG-3D loss's value on a fixed model and batch, pinned across the speed changes
(docs/benchmarks.md, MG-3D profile): the vocabulary head on masked words only and the decoder's
half-resolution head. ``decoder_head_stride=1`` is the model before them; its values are the
ones the code gave before (recorded 2026-12-06), so the changes kept every definition."""

import pytest
import torch

from medmap.losses.mg3d import MG3DLoss, mlm_loss
from medmap.models.encoders import CNNConfig
from medmap.models.mg3d import MG3DConfig, MG3DModel

BEFORE = {"mim_loss": 1.186455, "mlm_loss": 4.13222, "sfr_loss": 0.220617, "cml_loss": 2.325999,
          "ssm_loss": 1.003917, "dfa_loss": 3.768268, "itc_loss": 1.0983, "loss": 6.160385}
HALF_RES_HEAD = {"mim_loss": 1.054603, "mlm_loss": 4.181341, "sfr_loss": 0.219936,
                 "cml_loss": 2.02759, "ssm_loss": 1.006112, "dfa_loss": 1.120164,
                 "itc_loss": 1.0983, "loss": 5.783154}


def _fixed(head_stride: int):
    torch.manual_seed(0)
    cfg = MG3DConfig.tiny(["T2WI", "C+A"], vocab_size=50, text_dim=16,
                          encoder=CNNConfig(channels=(8, 16, 32), norm="batch"), embed_dim=16,
                          decoder_head_stride=head_stride)
    model = MG3DModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    B, S, L, Sn, T = 4, 16, 12, 3, 16
    batch = {"image": torch.randn(B, 1, S, S, S, generator=g),
             "model_modality": torch.tensor([0, 1, 0, 1]),
             "text": torch.randn(B, T, generator=g), "tokens": torch.randn(B, L, T, generator=g),
             "token_mask": torch.ones(B, L, dtype=torch.bool),
             "input_ids": torch.randint(0, 50, (B, L), generator=g),
             "word_mask": torch.ones(B, L, dtype=torch.bool),
             "sentence_index": (torch.arange(L) // 4).repeat(B, 1),
             "sentences": torch.randn(B, Sn, T, generator=g),
             "sentence_emb": torch.randn(B, Sn, T, generator=g),
             "sentence_mask": torch.ones(B, Sn, dtype=torch.bool)}
    batch["token_mask"][1, 9:] = False
    batch["word_mask"][:, 0] = False
    return cfg, model, batch


@pytest.mark.parametrize("head_stride,want", [(1, BEFORE), (2, HALF_RES_HEAD)])
def test_loss_values_pinned(head_stride, want):
    cfg, model, batch = _fixed(head_stride)
    with torch.no_grad():
        out = MG3DLoss(cfg.losses)(**model(batch, generator=torch.Generator().manual_seed(2)))
    got = {k: round(float(out[k]), 6) for k in want}
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_masked_head_equals_the_full_head():
    """The head on masked words only gives the loss the full (B, L, V) head gave."""
    cfg, model, batch = _fixed(2)
    torch.manual_seed(3)
    h = torch.randn(4, 12, cfg.embed_dim)
    mask = torch.rand(4, 12) < 0.3
    mask[0, 0] = True
    full = mlm_loss(model.mlm_head(h), batch["input_ids"], mask)
    sel = mlm_loss(model.mlm_head(h[mask]), batch["input_ids"][mask])
    assert torch.allclose(full, sel, atol=1e-6)
    empty = mlm_loss(model.mlm_head(h[:0, 0]), batch["input_ids"][:0, 0])
    assert float(empty) == 0.0


def test_folder_of_the_full_resolution_decoder_still_loads(tmp_path):
    """A model saved before decoder_head_stride existed (its config lacks the key) rebuilds
    with the decoder its weights hold."""
    import json

    from medmap.models.hub import from_pretrained, save_pretrained

    cfg, model, _ = _fixed(1)
    save_pretrained(model, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    del doc["config"]["decoder_head_stride"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(doc))
    back, _ = from_pretrained(tmp_path / "m")
    assert back.cfg.decoder_head_stride == 1
    assert len(back.decoder.blocks) == len(model.decoder.blocks)
