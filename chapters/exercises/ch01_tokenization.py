"""Chapter 1 exercises: tokenization (WordPiece).

Fill in the functions, then check them:  bert-from-scratch check 1
(or: python -m bert_from_scratch.exercises check 1). Each part prints PASS or FAIL with the reason.
"""
import unicodedata  # noqa: F401  (you will want unicodedata.normalize and unicodedata.category)


def basic_tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase words and single punctuation characters (BERT's uncased "basic" step).

    1. CJK: put spaces around every CJK ideograph, so each one is a word of its own (BERT's code
       points: U+4E00..U+9FFF, U+3400..U+4DBF, U+20000..U+2A6DF, U+2A700..U+2B73F, U+2B740..U+2B81F,
       U+2B820..U+2CEAF, U+F900..U+FAFF, U+2F800..U+2FA1F; Japanese kana and Korean hangul are not
       ideographs and stay in their word);
    2. lowercase;
    3. strip accents: ``unicodedata.normalize("NFD", text)`` splits "é" into "e" + a combining mark,
       then drop every character whose ``unicodedata.category(ch)`` is ``"Mn"``;
    4. split on whitespace;
    5. cut every punctuation character out as a word of its own. Punctuation = Unicode category
       starting with "P", plus the ASCII symbols ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``. So ``_``
       is punctuation, but a non-ASCII symbol such as ``£`` or ``€`` (category "Sc") is not:
       "£5" stays one word. (A regex ``\\w+|[^\\w\\s]`` gets ``_``, ``£`` and CJK wrong.)

    Examples: "Héllo, World!" -> ["hello", ",", "world", "!"];
              "snake_case £5 中文" -> ["snake", "_", "case", "£5", "中", "文"]
    """
    raise NotImplementedError("chapter 1: basic_tokenize")


def wordpiece(word: str, vocab) -> list[str]:
    """Cut one word into vocabulary pieces, greedily, longest match first.

    ``vocab`` supports ``in`` (a set or dict of strings). Start at character 0 and take the
    LONGEST prefix that is in ``vocab``; continue from where it ended, now looking for
    ``"##" + substring`` pieces, and return them WITH their ``##`` continuation prefix. If at some point no piece matches, the whole word is
    ``["[UNK]"]`` (not a partial list). Words longer than 100 characters are ``["[UNK]"]``.

    Example (vocab has "un", "##aff", "##able"): "unaffable" -> ["un", "##aff", "##able"]
    """
    raise NotImplementedError("chapter 1: wordpiece")
