"""Report text: frozen Hugging Face encoders with an on-disk embedding cache, and MG-3D's
report sentence splitting.

Exports are loaded lazily, so ``import medmap.text.sentences`` (or ``.prompts``) does not import
torch.

Example:
    >>> from medmap.text import split_sentences
    >>> split_sentences("Hepatic cyst (segment VII, 2.5 cm). No biliary dilatation.")
    ['Hepatic cyst (segment VII, 2.5 cm)', 'No biliary dilatation']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medmap._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TEXT_MODEL": "medmap.text.encoder",
    "MODEL_ALIASES": "medmap.text.encoder",
    "FrozenTextEncoder": "medmap.text.encoder",
    "TextModelNotFoundError": "medmap.text.encoder",
    "TokenFeatures": "medmap.text.encoder",
    "resolve_model_path": "medmap.text.encoder",
    "EmbeddingCache": "medmap.text.cache",
    "text_key": "medmap.text.cache",
    "sentence_spans": "medmap.text.sentences",
    "split_sentences": "medmap.text.sentences",
}

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "MODEL_ALIASES",
    "EmbeddingCache",
    "FrozenTextEncoder",
    "TextModelNotFoundError",
    "TokenFeatures",
    "resolve_model_path",
    "sentence_spans",
    "split_sentences",
    "text_key",
]
assert set(__all__) == set(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from medmap.text.cache import EmbeddingCache, text_key
    from medmap.text.encoder import (
        DEFAULT_TEXT_MODEL,
        MODEL_ALIASES,
        FrozenTextEncoder,
        TextModelNotFoundError,
        TokenFeatures,
        resolve_model_path,
    )
    from medmap.text.sentences import sentence_spans, split_sentences
