import pytest
import torch

from medmap.losses.mg3d import MG3DLoss, MG3DLossConfig
from medmap.models.encoders import tiny_encoder_config
from medmap.models.fusion import CrossModalAttention, FusionStack
from medmap.models.mg3d import (MG3DConfig, MG3DModel, random_volume_mask, random_word_mask,
                                sentence_mean)
from medmap.train.mg3d import MG3DTextTable, token_sentence_index

REPORTS = [
    "A 23 mm lesion in segment VII is markedly hyperintense, well defined. No biliary dilatation.",
    "Small cyst (segment II, 5 mm). Mild ascites; no lymphadenopathy.",
    "Heterogeneous mass with central necrosis. Washout in the portal venous phase.",
    "Normal liver.",
]


@pytest.fixture(scope="module")
def text(tiny_bert):
    from medmap.text.encoder import FrozenTextEncoder

    enc = FrozenTextEncoder(tiny_bert, device="cpu")
    return enc, MG3DTextTable(enc, REPORTS)


def _batch(table, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = table.batch(REPORTS)
    b["image"] = torch.randn(4, 1, 32, 32, 32, generator=g)
    b["model_modality"] = torch.tensor([0, 0, 1, 1])
    return b


def _run(model, batch, **kw):
    """The model's intermediates and the loss terms computed from them (``loss(**out)``)."""
    out = model(batch, **kw)
    return {**out, **MG3DLoss(model.cfg.losses)(**out)}


def _model(enc, **kw):
    torch.manual_seed(0)
    return MG3DModel(MG3DConfig.tiny(["T2WI", "C+A"], vocab_size=len(enc.tokenizer),
                                     text_dim=enc.hidden_size, **kw))


# -- cross-modal attention -------------------------------------------------------------------
def test_proposed_attention_keeps_the_dominant_layout_and_is_guided():
    torch.manual_seed(0)
    att = CrossModalAttention(8, 2, "proposed")
    x, g = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out = att(x, g)
    assert out.shape == (2, 5, 8)
    assert not torch.allclose(out, att(x, torch.randn(2, 3, 8)))   # the guide steers the weights
    # with uniform attention (zero query weights) every value is weighted by exactly 1
    with torch.no_grad():
        att.q.weight.zero_()
        att.q.bias.zero_()
    assert torch.allclose(att(x, g), att.out(att.v(x)), atol=1e-6)
    # padded guide tokens and padded dominant tokens change nothing for the real ones
    torch.manual_seed(1)
    att = CrossModalAttention(8, 2, "proposed")
    gmask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    xmask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    g2, x2 = g.clone(), x.clone()
    g2[~gmask] = 50.0
    x2[~xmask] = -50.0
    a, b = att(x, g, xmask, gmask), att(x2, g2, xmask, gmask)
    assert torch.allclose(a[xmask], b[xmask], atol=1e-5)


def test_classical_attention_generates_from_the_guide_values():
    torch.manual_seed(0)
    att = CrossModalAttention(8, 2, "classical")
    x, g = torch.randn(1, 5, 8), torch.randn(1, 1, 8)
    # one guide token: every output is that token's projected value
    expect = att.out(att.v(g)).expand(1, 5, 8)
    assert torch.allclose(att(x, g), expect, atol=1e-6)
    per = att.per_query(x, g)                 # eq. 11: one vector per guide token
    assert per.shape == (1, 1, 8)


def test_fusion_stack_runs_both_modes():
    for mode in ("proposed", "classical"):
        s = FusionStack(16, 2, layers=2, mode=mode)
        out = s(torch.randn(2, 6, 16), torch.randn(2, 3, 16), None,
                torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))
        assert out.shape == (2, 6, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="mode"):
        CrossModalAttention(8, 2, "other")


# -- text features ---------------------------------------------------------------------------
def test_token_sentence_index_by_offsets():
    # "[CLS] ab cd , ef [SEP]" with fragments "ab cd" (0-5) and "ef" (8-10)
    offsets = [(0, 0), (0, 2), (3, 5), (6, 7), (8, 10), (0, 0)]
    special = [1, 0, 0, 0, 0, 1]
    assert token_sentence_index(offsets, special, [(0, 5), (8, 10)]) == [-1, 0, 0, -1, 1, -1]


def test_text_table_sentences_are_token_means_of_split_sentences(text):
    from medmap.text.sentences import split_sentences

    enc, table = text
    for r in REPORTS:
        assert table.sentences_of(r) == split_sentences(r)
    b = table.batch(REPORTS)
    tf = enc.encode_tokens(REPORTS)
    i = 1                                                       # "Small cyst (segment II, 5 mm)..."
    n = int(tf.attention_mask[i].sum())
    assert torch.allclose(b["tokens"][i, :n], tf.features[i, :n], atol=1e-2)   # float16 storage
    assert torch.equal(b["input_ids"][i, :n], tf.input_ids[i, :n])
    words = enc.tokenizer.convert_ids_to_tokens(b["input_ids"][i, :n].tolist())
    first = [w for w, s in zip(words, b["sentence_index"][i, :n].tolist()) if s == 0]
    assert first == enc.tokenizer.tokenize("Small cyst (segment II, 5 mm)")
    assert b["sentence_index"][i, 0] == -1 and not b["word_mask"][i, 0]        # [CLS]
    mean0 = tf.features[i, :n][b["sentence_index"][i, :n] == 0].mean(0)
    assert torch.allclose(b["sentences"][i, 0], mean0, atol=1e-2)
    assert b["sentence_mask"].sum(1).tolist() == [3, 3, 2, 1]
    solo = enc.encode(["Mild ascites"])[0]                       # SSM: each sentence alone
    assert torch.allclose(b["sentence_emb"][i, 1], solo, atol=1e-2)
    assert torch.allclose(b["text"][i], enc.encode([REPORTS[i]])[0])


def test_masks():
    m = random_volume_mask((3, 1, 32, 32, 32), 8, 0.5)
    assert m.shape == (3, 1, 32, 32, 32)
    assert m.float().mean((1, 2, 3, 4)).tolist() == [0.5] * 3
    blocks = m[:, 0].reshape(3, 4, 8, 4, 8, 4, 8).float().mean((2, 4, 6))
    assert ((blocks == 0) | (blocks == 1)).all()               # whole sub-volumes
    maskable = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    for seed in range(5):
        w = random_word_mask(maskable, 0.3, torch.Generator().manual_seed(seed))
        assert not (w & ~maskable).any() and w.any(1).all()


def test_sentence_mean():
    tok = torch.arange(8.0).view(1, 4, 2)
    idx = torch.tensor([[-1, 0, 0, 1]])
    assert sentence_mean(tok, idx, 3).tolist() == [[[3.0, 4.0], [6.0, 7.0], [0.0, 0.0]]]


# -- the model -------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
def test_every_trainable_parameter_gets_a_gradient_and_the_text_encoder_none(text, shared):
    enc, table = text
    model = _model(enc, shared_encoder=shared)
    assert list(model.experts.encoders) == (["shared"] if shared else ["T2WI", "C+A"])
    out = _run(model, _batch(table))
    for name in ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc"):
        assert torch.isfinite(out[f"{name}_loss"]), name
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not zero, zero
    assert all(not p.requires_grad and p.grad is None for p in enc.model.parameters())


def test_interface_for_downstream_tasks(text):
    enc, table = text
    model = _model(enc)
    b = _batch(table)
    v = model.encode_image(b["image"], b["model_modality"])
    assert v.shape == (4, model.cfg.embed_dim)
    assert model.text_proj.in_features == model.cfg.text_dim == enc.hidden_size
    assert model.text_proj(enc.encode(REPORTS)).shape == (4, model.cfg.embed_dim)
    out = model(b)
    assert torch.allclose(out["image_features"], v, atol=1e-5)   # CML / ITC train exactly F_I
    assert torch.allclose(out["text_features"], model.text_proj(b["text"]))


def test_loss_switches_and_ablation_modes(text):
    enc, table = text
    cfg_losses = MG3DLossConfig(mim=False, mlm=False, sfr=False, cml=False)
    model = _model(enc, losses=cfg_losses)
    out = _run(model, _batch(table))
    assert {k for k in out if k.endswith("_loss")} == {"ssm_loss", "dfa_loss", "itc_loss"}
    out["loss"].backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.mlm_head.parameters())
    # CML alone still needs both fusion branches (unmasked inputs), not the decoder / MLM head
    model = _model(enc, losses=MG3DLossConfig(mim=False, mlm=False, sfr=False, ssm=False,
                                              dfa=False, itc=False))
    out = _run(model, _batch(table))
    assert set(k for k in out if k.endswith("_loss")) == {"cml_loss"}
    # Table III variants: classical attention, word-guided MIM
    model = _model(enc, mim_attention="classical", mlm_attention="classical", mim_guidance="word")
    assert torch.isfinite(_run(model, _batch(table))["loss"])


def _overfit(enc, table, losses: MG3DLossConfig, steps: int = 25) -> list[dict[str, float]]:
    model = _model(enc, encoder=tiny_encoder_config("cnn"), mask_patch=4, losses=losses)
    b = _batch(table)
    g = torch.Generator().manual_seed(0)
    # smooth 16^3 volumes (masked regions are predictable from their surroundings), fixed masks
    b["image"] = torch.nn.functional.interpolate(torch.randn(4, 1, 4, 4, 4, generator=g),
                                                 size=(16, 16, 16), mode="trilinear")
    mim_mask = random_volume_mask(b["image"].shape, 4, 0.5, generator=g)
    mlm_mask = random_word_mask(b["word_mask"], 0.3, g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    hist = []
    for _ in range(steps):
        out = _run(model, b, mim_mask=mim_mask, mlm_mask=mlm_mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: v.item() for k, v in out.items() if k.endswith("_loss") or k == "loss"})
    return hist


def _drop(hist, key):
    return sum(h[key] for h in hist[-3:]) / 3, sum(h[key] for h in hist[:3]) / 3


ALL = ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc")


@pytest.mark.parametrize("name", ALL)
def test_each_loss_decreases_when_overfitting_a_few_cases(text, name):
    enc, table = text
    hist = _overfit(enc, table, MG3DLossConfig(**{n: n == name for n in ALL}), steps=20)
    last, first = _drop(hist, f"{name}_loss")
    assert last < 0.8 * first, (name, first, last)


def test_the_full_recipe_decreases_its_total_and_its_main_terms(text):
    enc, table = text
    hist = _overfit(enc, table, MG3DLossConfig())
    assert set(hist[0]) == {"loss", *(f"{n}_loss" for n in ALL)}
    for k in ("loss", "mim_loss", "mlm_loss", "dfa_loss", "itc_loss", "cml_loss", "sfr_loss"):
        last, first = _drop(hist, k)
        assert last < 0.95 * first, (k, first, last)


def test_save_and_load_round_trip(text, tmp_path):
    from medmap.models.hub import from_pretrained, save_pretrained

    enc, table = text
    model = _model(enc, shared_encoder=True).eval()
    b = _batch(table)
    path = save_pretrained(model, tmp_path / "m", organ="liver")
    loaded, doc = from_pretrained(path, expect_type="mg3d")
    assert doc["model_type"] == "mg3d" and doc["config"]["shared_encoder"] is True
    assert isinstance(loaded, MG3DModel) and loaded.cfg == model.cfg
    with torch.no_grad():
        a = model.encode_image(b["image"], b["model_modality"])
        c = loaded.encode_image(b["image"], b["model_modality"])
    assert torch.equal(a, c)
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_config_requires_filled_fields():
    with pytest.raises(ValueError, match="None"):
        MG3DModel(MG3DConfig(modalities=["T2WI"], vocab_size=10))
