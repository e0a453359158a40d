"""A tokenizer on disk: ``vocab.txt``, ``tokenizer.json`` and ``tokenizer_config.json``.

A model folder carries its tokenizer in up to three files:

- ``vocab.txt``: one token per line, the line number is the id (BERT's original format);
- ``tokenizer.json``: Hugging Face's ``tokenizers`` file, the whole pipeline as JSON. Folders
  saved by ``transformers`` 5 have only this one: the vocabulary is ``model.vocab`` (a
  ``{token: id}`` map of a ``WordPiece`` model) and the options are the ``BertNormalizer``'s
  ``lowercase``, ``strip_accents``, ``handle_chinese_chars`` and ``clean_text``;
- ``tokenizer_config.json``: the tokenizer class, its options (``do_lower_case`` ...), the
  special tokens and ``model_max_length``, the longest input the model takes. Without it
  Hugging Face assumes "no limit" and ``truncation=True`` does not cut at the model's length.

:func:`read_folder` reads whichever a folder has; :func:`write_folder` writes ``vocab.txt`` and
``tokenizer_config.json`` (what ``Tokenizer.save_pretrained`` does for every checkpoint we save).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..constants import VOCAB_NAME
from ..files import atomic_write

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"

#: Hugging Face's name for each special token of BERT
SPECIAL_TOKEN_KEYS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                      "mask_token": "[MASK]"}
#: the options a Tokenizer takes, by Hugging Face's names
OPTION_NAMES = ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "never_split", "clean_text")


def read_vocab_txt(path: str | os.PathLike) -> list[str]:
    """The tokens of ``vocab.txt`` (or of ``path/vocab.txt`` if ``path`` is a folder), in id order."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n").strip() for line in f]
    while tokens and tokens[-1] == "":      # a trailing newline is not a token
        tokens.pop()
    if not tokens:
        raise ValueError(f"vocabulary file {path} is empty")
    return tokens


def write_vocab_txt(path: str | os.PathLike, tokens: list[str]) -> Path:
    """Write ``vocab.txt`` (or ``path/vocab.txt`` if ``path`` is a folder); return the file."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, "".join(t + "\n" for t in tokens))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def read_tokenizer_json(path: Path) -> tuple[list[str], dict]:
    """``(tokens in id order, options)`` from a Hugging Face ``tokenizer.json`` of a WordPiece model."""
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path} does not hold a WordPiece model (model.type is {model.get('type')!r}); "
                         "only BERT's WordPiece tokenizer is supported")
    if model.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"{path}: continuing_subword_prefix {model['continuing_subword_prefix']!r} is not '##'")
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens") or []:     # added tokens outside the model's vocab
        if isinstance(added, dict) and added.get("content") not in vocab:
            vocab[added["content"]] = added["id"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"{path}: the vocabulary's ids are not exactly 0..{len(by_id) - 1}")
    return [t for t, _ in by_id], _normalizer_options(data.get("normalizer"))


def _normalizer_options(normalizer) -> dict:
    """A ``BertNormalizer`` (alone or inside a ``Sequence``) as our option names."""
    if not isinstance(normalizer, dict):
        return {}
    if normalizer.get("type") == "Sequence":
        for n in normalizer.get("normalizers") or []:
            found = _normalizer_options(n)
            if found:
                return found
        return {}
    if normalizer.get("type") != "BertNormalizer":
        return {}
    names = {"lowercase": "do_lower_case", "strip_accents": "strip_accents",
             "handle_chinese_chars": "tokenize_chinese_chars", "clean_text": "clean_text"}
    return {ours: normalizer[theirs] for theirs, ours in names.items() if theirs in normalizer}


def read_config_options(folder: Path) -> dict:
    """The options ``tokenizer_config.json`` sets (those it leaves at ``null`` are left out)."""
    path = folder / TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    config = _read_json(path)
    return {k: config[k] for k in OPTION_NAMES if config.get(k) is not None}


def read_folder(folder: str | os.PathLike, vocab_file: str | os.PathLike | None = None) -> tuple[list[str], dict]:
    """``(tokens, options)`` of the tokenizer saved in ``folder``.

    Vocabulary: ``vocab_file`` if given, else ``folder/vocab.txt``, else ``folder/tokenizer.json``.
    Options: ``tokenizer_config.json`` first (as Hugging Face, whose ``BertTokenizer`` rebuilds its
    normaliser from the config's ``do_lower_case``/``strip_accents``), then ``tokenizer.json``'s
    normaliser, then BERT's defaults.
    """
    folder = Path(folder)
    options: dict = {}
    if (folder / TOKENIZER_JSON).is_file():
        tokens_json, options = read_tokenizer_json(folder / TOKENIZER_JSON)
    if vocab_file is not None:
        tokens = read_vocab_txt(vocab_file)
    elif (folder / VOCAB_NAME).is_file():
        tokens = read_vocab_txt(folder / VOCAB_NAME)
    elif (folder / TOKENIZER_JSON).is_file():
        tokens = tokens_json
    else:
        raise FileNotFoundError(f"{folder} has no vocabulary: neither {VOCAB_NAME} nor {TOKENIZER_JSON}")
    options.update(read_config_options(folder))
    length = _read_json(folder / TOKENIZER_CONFIG).get("model_max_length") if (folder / TOKENIZER_CONFIG).is_file() \
        else None
    if isinstance(length, int) and 0 < length < 10**9:      # Hugging Face writes 1e30 for "no limit"
        options["model_max_length"] = length
    if options.get("never_split") is not None and not isinstance(options["never_split"], list):
        raise ValueError(f"{folder / TOKENIZER_CONFIG}: never_split must be a list of strings")
    return tokens, options


def write_folder(folder: str | os.PathLike, tokens: list[str], options: dict,
                 model_max_length: int | None = None) -> Path:
    """Write ``vocab.txt`` and ``tokenizer_config.json`` into ``folder``; return ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_vocab_txt(folder / VOCAB_NAME, tokens)
    config = {"tokenizer_class": "BertTokenizer", **{k: options[k] for k in OPTION_NAMES if k in options},
              **SPECIAL_TOKEN_KEYS}
    if not config.get("never_split"):
        config.pop("never_split", None)
    if model_max_length is not None:
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive integer; got {model_max_length!r}")
        config["model_max_length"] = model_max_length
    atomic_write(folder / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return folder
