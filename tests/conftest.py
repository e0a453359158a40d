"""Shared test fixtures: optional dependencies skip cleanly, GPU tests need a working GPU."""
from __future__ import annotations

import importlib.util
import os

import pytest

from bert_from_scratch.hf_import import import_transformers
from bert_from_scratch.nn.xp import gpu_available

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRANSFORMERS = HAS_TORCH and importlib.util.find_spec("transformers") is not None
if HAS_TRANSFORMERS:
    # `python -m pytest` puts the repository root first on sys.path, where our kernels/ would be taken for the
    # PyPI package `kernels` that transformers >= 5.25 imports (bert_from_scratch/hf_import.py): import it right
    import_transformers()

requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[reference]')")
requires_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="torch + transformers are not installed (pip install -e '.[reference]')")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CuPy can actually use a CUDA device."""
    if any("gpu" in item.keywords for item in items) and not gpu_available():
        skip = pytest.mark.skip(reason="no usable CUDA GPU (CuPy missing or no device)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# The CLI's jobs compile the Numba kernels in two background processes while they load their data
# (training/compile_ahead.py). The kernels are long cached when the suite runs, so outside
# tests/test_compile_ahead.py the workers would only cost their start-up: off.
os.environ.setdefault("BERT_FROM_SCRATCH_COMPILE_AHEAD", "0")


REVIEW_WORDS = "the a and of to is it in that this film movie story good bad funny best worst".split()


@pytest.fixture
def tiny_review_checkpoint(tmp_path):
    """A tiny pretraining checkpoint (random weights, 2 x 16) with a review vocabulary: (folder, tokenizer, config)."""
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer
    from bert_from_scratch.model import BertForPreTraining

    tok = Tokenizer(list(SPECIAL_TOKENS) + REVIEW_WORDS)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    folder = tmp_path / "ckpt"
    BertForPreTraining(cfg, seed=1).save_pretrained(folder)
    tok.save_vocab(folder / "vocab.txt")
    return folder, tok, cfg


@pytest.fixture(scope="session")
def count_vector_corpus(tmp_path_factory):
    """A text file of 12 documents over ~600 words: enough pieces (> 128) for 128-dim count vectors."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(f"w{(d * 37 + i) % 300} and x{(d + i * 11) % 300} here." for i in range(30))
                                for d in range(12)))
    return path
