"""WordPiece vocabularies built offline, so a tiny BERT tokenizer needs no download."""

from __future__ import annotations

import os
import re
import string
from typing import Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# BERT's basic tokenizer splits off every ASCII punctuation character (``_`` included).
_WORD_OR_PUNCT = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


def basic_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, split the way BERT's basic tokenizer splits them."""
    return _WORD_OR_PUNCT.findall(text.lower())


def build_vocab(texts: Iterable[str], characters: str = string.ascii_lowercase + string.digits) -> list[str]:
    """Vocabulary list: special tokens, every word of ``texts``, then single characters.

    Whole words come first so the tokenizer keeps them as one piece; the characters and their
    ``##`` continuations let any other lower-case alphanumeric word (a file name, a number) be
    spelled out instead of becoming ``[UNK]``. ``[PAD]`` is id 0, matching BERT's ``pad_token_id``.
    Use with ``transformers.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})`` or save with
    :func:`save_vocab` for ``BertTokenizer(vocab_file)``.
    """
    tokens: list[str] = list(SPECIAL_TOKENS)
    seen = set(tokens)

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    words = sorted({w for text in texts for w in basic_words(text)})
    for word in words:
        add(word)
    for char in characters + string.punctuation:
        add(char)
    for char in characters:
        add("##" + char)
    return tokens


def save_vocab(vocab: list[str], path: str | os.PathLike) -> None:
    """Write one token per line (the ``vocab.txt`` format BERT tokenizers read)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")


def make_tokenizer(vocab: list[str], model_max_length: int = 64):
    """An uncased BERT WordPiece tokenizer over ``vocab``, built in memory."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=model_max_length)
