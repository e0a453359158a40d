"""Chapter 1 exercises: tokenization (WordPiece).

Fill in the functions, then check them:  bert-from-scratch check 1
(or: python -m bert_from_scratch.exercises check 1). Each part prints PASS or FAIL with the reason.
"""
import unicodedata  # noqa: F401  (you will want unicodedata.normalize and unicodedata.category)


def basic_tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase words and single punctuation characters (BERT's uncased "basic" step).

    1. lowercase;
    2. strip accents: ``unicodedata.normalize("NFD", text)`` splits "é" into "e" + a combining mark,
       then drop every character whose ``unicodedata.category(ch)`` is ``"Mn"``;
    3. split on whitespace;
    4. cut every punctuation character out as a word of its own. Punctuation = Unicode category
       starting with "P", plus the ASCII symbols ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``.

    Example: "Héllo, World!" -> ["hello", ",", "world", "!"]
    """
    raise NotImplementedError("chapter 1: basic_tokenize")


def wordpiece(word: str, vocab) -> list[str]:
    """Cut one word into vocabulary pieces, greedily, longest match first.

    ``vocab`` supports ``in`` (a set or dict of strings). Start at character 0 and take the
    LONGEST prefix that is in ``vocab``; continue from where it ended, now looking for
    ``"##" + substring`` pieces. If at some point no piece matches, the whole word is
    ``["[UNK]"]`` (not a partial list). Words longer than 100 characters are ``["[UNK]"]``.

    Example (vocab has "un", "##aff", "##able"): "unaffable" -> ["un", "##aff", "##able"]
    """
    raise NotImplementedError("chapter 1: wordpiece")
