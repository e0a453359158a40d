"""``pretrain --word-embeddings-std``: the word embeddings start at that standard deviation, from count vectors or
at random, and every other tensor starts as without the option; the report records it; the main job's
default is 0.1 (frozen count vectors), as is ``--preset long-frozen``'s; ``--preset long``'s is BERT's 0.02."""
import numpy as np
import pytest

from bert_from_scratch.checkpoint import load_safetensors
from bert_from_scratch.model.heads import WORD_EMBEDDINGS


def _start(folder, corpus, init, std):
    """The weights a job starts from (one step at lr 0: warmup 1) and its report."""
    from bert_from_scratch.training.pretrain_job import run_pretraining
    report = run_pretraining(corpus=str(corpus), out=folder, steps=1, warmup=1, batch_size=4, vocab_size=400,
                             log=lambda m: None, progress=False, embeddings_init=init, word_embeddings_std=std)[1]
    return load_safetensors(folder / "checkpoint" / "model.safetensors"), report


@pytest.mark.parametrize("init", ["counts", "random"])
def test_the_word_embeddings_start_at_the_std_asked_and_nothing_else_moves(count_vector_corpus, tmp_path, init):
    base, base_report = _start(tmp_path / "base", count_vector_corpus, init, std=0.02)
    wide, wide_report = _start(tmp_path / "wide", count_vector_corpus, init, std=0.1)
    assert base_report["word_embeddings_std"] == 0.02 and wide_report["word_embeddings_std"] == 0.1
    words, wide_words = base[WORD_EMBEDDINGS], wide[WORD_EMBEDDINGS]
    assert wide_words.std() == pytest.approx(5 * words.std(), rel=1e-5)       # the same directions, 5x longer
    np.testing.assert_allclose(wide_words, 5 * words, rtol=1e-5, atol=1e-9)
    if init == "counts":                                                        # centred and scaled exactly
        assert wide_words.std() == pytest.approx(0.1, rel=1e-4)
    else:                                                                       # a draw of normal(0, 0.1)
        assert 0.09 < wide_words.std() < 0.11
    assert all(np.array_equal(base[n], wide[n]) for n in base if n != WORD_EMBEDDINGS)


def test_bad_stds_are_refused_and_the_default_is_berts():
    from bert_from_scratch.cli import build_parser
    from bert_from_scratch.training.presets import resolve_preset
    from bert_from_scratch.training.pretrain_job import run_pretraining

    def resolved(*argv):
        args = build_parser().parse_args(["pretrain", *argv])
        return vars(resolve_preset(args, args.preset))["word_embeddings_std"]

    assert resolved() == 0.1                                             # the main job since 2026-12-05
    assert resolved("--preset", "long") == 0.02 and resolved("--preset", "long-frozen") == 0.1
    assert resolved("--word-embeddings-std", "0.1") == 0.1
    with pytest.raises(ValueError, match="word_embeddings_std must be a positive number"):
        run_pretraining(word_embeddings_std=-1.0)
