"""Tiny, randomly initialised BERT checkpoints for fast, offline tests.

:func:`build_tiny_bert` writes a real Hugging Face model folder (``config.json``,
``model.safetensors``, tokenizer files) so :class:`~medmap.text.encoder.FrozenTextEncoder` loads it
through exactly the same ``from_pretrained`` path as BioBERT or MiniLM -- in well under a second.

Example:
    >>> from medmap.text.testing import build_tiny_bert
    >>> from medmap.text import FrozenTextEncoder
    >>> enc = FrozenTextEncoder(build_tiny_bert("tiny"), device="cpu")   # doctest: +SKIP
    >>> enc.encode(["hepatic cyst"]).shape                                 # doctest: +SKIP
    torch.Size([1, 32])
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["build_tiny_bert", "tiny_vocab", "RADIOLOGY_WORDS"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Words of MedMoM-Sim's liver/brain reports and common radiology phrasing (lower case).
RADIOLOGY_WORDS: tuple[str, ...] = tuple(
    """
    a an the of in on at to with without and or no not is are was were be been shows show
    showing seen noted there this that it its which as by for from near than then previously
    prior compared stable new unchanged increased decreased mild moderate marked severe small
    large multiple single solitary few several approximately approx about size measures
    measuring mm cm diameter lesion lesions mass masses nodule nodules focus foci area region
    segment segments lobe lobes left right anterior posterior superior inferior medial lateral
    dome hilum periphery peripheral central subcapsular capsule wall rim margin margins border
    borders well defined ill circumscribed irregular smooth lobulated round oval
    liver hepatic hepatocellular intrahepatic biliary bile duct ducts dilatation gallbladder
    portal vein veins hepatic spleen pancreas kidney ascites lymphadenopathy
    brain cerebral cortex cortical white matter grey gray frontal parietal temporal occipital
    cerebellum cerebellar ventricle ventricles ventricular midline shift mass effect edema
    oedema perilesional tumour tumor tumours benign malignant glioma glioblastoma meningioma
    metastasis metastases metastatic hemangioma haemangioma cyst cysts cystic abscess
    cholangiocarcinoma focal nodular hyperplasia carcinoma hcc fnh scar central necrosis
    necrotic haemorrhage hemorrhage calcification fat fluid solid component septa septations
    signal intensity hyperintense hypointense isointense hyperintensity hypointensity bright
    dark homogeneous heterogeneous heterogeneously homogeneously restricted restriction
    diffusion enhancement enhancing enhances non arterial phase phases portal venous delayed
    washout wash out hyperenhancement hypoenhancement progressive centripetal fill filling
    nodular ring target appearance pattern images image sequence sequences weighted imaging
    in opposed out phase chemical shift drop loss suggest suggests suggesting suggestive
    consistent likely probable possible differential diagnosis impression findings finding
    t1 t2 t1wi t2wi t1c flair t2flair dwi adc pre contrast post gadolinium mri mr study
    normal abnormal typical atypical feature features characteristic vs dr eg ie
    i ii iii iv iva ivb v vi vii viii one two three four five
    mildly slightly markedly moderately very largest adjacent centre center surrounding keeping
    avid thick thin iso hyperenhancing hypoenhancing centrally intense around background clearly
    relative brighter darker internal tissue enhance remains demonstrates extending persistent
    dura dural falx csf vasogenic grade intra extra axial sulci effacement parenchymal upstream
    steatosis cirrhosis cirrhotic splenomegaly dilated loses diffuse retains following
    indeterminate further characterisation recommended uncertain nature correlation clinical
    history advised considered dominant fades towards includes considerations sparing similar
    definite progression complete completely filled fills fibrous stroma transient continuous
    sharp sharply imperceptible containing surrounded halo texture intralesional microscopic
    suppressed infiltrative discontinuous marginated low high predominantly abnormality
    hemisphere parasagittal convexity olfactory groove sphenoid wing fossa displaces attachment
    minimal mixed vivid suspicious sign present thickening displacing favouring coarse within
    into inside
    """.split()
)


def tiny_vocab(words: Iterable[str] | None = None) -> list[str]:
    """WordPiece vocabulary: special tokens, ``words`` (default :data:`RADIOLOGY_WORDS`), then
    every lower-case letter, digit and punctuation mark both as a word start and as ``##`` piece,
    so any lower-case ASCII text tokenises without ``[UNK]``."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for w in RADIOLOGY_WORDS if words is None else words:
        w = w.strip().lower()
        if w:
            vocab.setdefault(w)
    for c in chars:
        vocab.setdefault(c)
    for c in chars:
        vocab.setdefault("##" + c)
    return list(vocab)


def build_tiny_bert(
    out_dir: str | Path,
    vocab_words: Iterable[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 128,
) -> Path:
    """Write a seeded random ``BertModel`` + ``BertTokenizer`` to ``out_dir``; returns the path.

    ``vocab_words`` (default :data:`RADIOLOGY_WORDS`) are whole-word tokens; characters cover
    everything else.  Weights are saved as ``model.safetensors``.  The global torch RNG state is
    left untouched.
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(vocab_words)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        pad_token_id=0,
    )
    from medmap.text.encoder import _quiet_transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    tokenizer = BertTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        do_lower_case=True,
        model_max_length=max_position_embeddings,
    )
    with _quiet_transformers():
        model.save_pretrained(out)  # safetensors is the default (and only) format
        tokenizer.save_pretrained(out)
    # the plain WordPiece vocab file too (tokenizer.json alone suffices for transformers 5)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return out
