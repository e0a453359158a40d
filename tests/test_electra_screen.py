"""docs/electra.py, the replaced-token detection screen of docs/results.md: the discriminator's targets mark exactly
the replaced pieces, the generator's samples follow its softmax, and a run trains all but the frozen word
embeddings into a folder that fine-tuning reads. Each check is shown to reject a planted bug."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bert_from_scratch.checkpoint import load_safetensors

SPEC = importlib.util.spec_from_file_location("electra", Path(__file__).parents[1] / "docs" / "electra.py")
electra = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(electra)


def _batch(seed=0, B=6, T=10, V=50):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[0, 7:] = 0                                                           # a padded row
    ids[0, 7:] = 0
    labels = np.full((B, T), -100)
    chosen = (rng.random((B, T)) < 0.3) & (mask == 1)
    labels[chosen] = ids[chosen]                                               # the originals
    ids[chosen] = 103                                                          # [MASK]
    n = int(chosen.sum())
    sampled = np.where(rng.random(n) < 0.5, labels[chosen], rng.integers(5, V, n))   # half are the original again
    return ids, labels, mask, sampled


def _check_targets(replaced_tokens):
    """By hand, position by position: the sample in place of the mask; 1 where it differs from the original."""
    ids, labels, mask, sampled = _batch()
    new_ids, targets = replaced_tokens(ids, labels, mask, sampled)
    k = 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if labels[b, t] != -100:
                assert new_ids[b, t] == sampled[k]
                assert targets[b, t] == int(sampled[k] != labels[b, t])
                k += 1
            else:
                assert new_ids[b, t] == ids[b, t]
                assert targets[b, t] == (0 if mask[b, t] else -100)
    assert k == len(sampled) and 0 < targets[targets >= 0].sum() < len(sampled)   # some samples were the original


def test_the_discriminator_targets_mark_exactly_the_replaced_pieces():
    _check_targets(electra.replaced_tokens)
    ids, labels, mask, sampled = _batch()
    before = ids.copy()
    electra.replaced_tokens(ids, labels, mask, sampled)
    assert np.array_equal(ids, before)                                         # the batch is not changed


def test_the_target_check_rejects_a_sample_equal_to_the_original_counted_as_replaced():
    def every_masked_position_replaced(ids, labels, mask, sampled):            # the planted bug
        new_ids, targets = electra.replaced_tokens(ids, labels, mask, sampled)
        targets[labels != -100] = 1
        return new_ids, targets

    with pytest.raises(AssertionError):
        _check_targets(every_masked_position_replaced)


def _check_sampler(sample):
    logits = np.tile(np.log([1.0, 3.0, 0.5, 0.5]), (20000, 1))                 # softmax 0.2, 0.6, 0.1, 0.1
    share = np.bincount(sample(logits, np.random.default_rng(0)), minlength=4) / len(logits)
    np.testing.assert_allclose(share, [0.2, 0.6, 0.1, 0.1], atol=0.015)


def test_the_generator_samples_follow_its_softmax_and_the_check_rejects_argmax():
    _check_sampler(electra.gumbel_sample)
    with pytest.raises(AssertionError):
        _check_sampler(lambda logits, rng: np.argmax(logits, axis=-1))        # no sampling: always the likeliest


def test_a_run_trains_all_but_the_word_embeddings_into_a_folder_fine_tuning_reads(count_vector_corpus, tmp_path):
    from bert_from_scratch.training.classification_models import load_for_classification

    job = dict(corpus=str(count_vector_corpus), batch_size=4, vocab_size=400, log=lambda m: None)
    electra.pretrain_electra(tmp_path / "start", steps=1, **job)              # one update at learning rate 0
    last = electra.pretrain_electra(tmp_path / "run", steps=4, **job)
    assert last["step"] == 4 and np.isfinite(last["generator_loss"]) and 0 < last["replaced_share"] < 1
    start, run = (load_safetensors(tmp_path / f / "checkpoint" / "model.safetensors") for f in ("start", "run"))
    changed = {n for n in start if not np.array_equal(start[n], run[n])}
    assert electra.WORD_EMBEDDINGS not in changed
    assert {n for n in changed if n.startswith("bert.encoder.")} == {n for n in start if n.startswith("bert.encoder.")}
    assert not {n for n in changed if n.startswith(("bert.pooler.", "cls."))}   # untrained: BERT's init
    model, tokenizer = load_for_classification(str(tmp_path / "run"), num_labels=2, log=lambda m: None)
    np.testing.assert_array_equal(model.params[electra.WORD_EMBEDDINGS], run[electra.WORD_EMBEDDINGS])
    assert len(tokenizer) == model.config.vocab_size
    with pytest.raises(SystemExit, match="exists; choose a new folder"):      # never over an earlier result
        electra.main([str(tmp_path / "run"), "--steps", "1"])
    for bad in (["--steps", "0"], ["--generator-layers", "0"], ["--lr", "-1"]):    # refused before any work
        with pytest.raises(SystemExit, match="must be positive"):
            electra.main([str(tmp_path / "bad"), *bad])
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")     # lr 1e300 in float32, on purpose
def test_a_diverging_run_stops_in_one_line_naming_the_step_and_writes_nothing(count_vector_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"^step \d+: the (generator|discriminator) diverged: .*; lower --lr$"):
        electra.pretrain_electra(tmp_path / "nan", corpus=str(count_vector_corpus), steps=4, batch_size=4,
                                 vocab_size=400, lr=1e300, log=lambda m: None)
    assert not (tmp_path / "nan" / "checkpoint").exists()
