"""Reaching the Hugging Face tokenizer behind whatever the engine hands us."""

from __future__ import annotations

from typing import Any


def hf_tokenizer(tokenizer: Any) -> Any:
    """The transformers tokenizer: unwraps mlx-lm's ``TokenizerWrapper`` (whose ``_tokenizer`` it is).

    A transformers tokenizer has a ``_tokenizer`` too (the Rust ``tokenizers.Tokenizer``), so the wrapper is
    recognised by its type name rather than by that attribute.
    """
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer
