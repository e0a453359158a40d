r"""Count-based word-piece vectors of a corpus: what its co-occurrence statistics alone hold.

A baseline for :mod:`.probe`: before asking whether pretraining learned features a task can read, ask whether the
pretraining text holds them. The classic answer from before neural word vectors (Levy, Goldberg & Dagan 2015,
"Improving distributional similarity with lessons learned from word embeddings"), in three steps, all closed form:

1. **Co-occurrence counts** :math:`C_{ij}`: piece :math:`j` within ``window`` pieces of piece :math:`i` in the same
   sentence, each pair weighted :math:`1/d` at distance :math:`d`, both directions (:math:`C` is symmetric).
2. **Positive PMI** with context-distribution smoothing (:math:`\alpha = 0.75`, as word2vec's negative sampling):

   .. math:: \mathrm{PPMI}_{ij} = \max\Big(0,\ \log \frac{C_{ij}\,/\,C_{**}}{(C_{i*}/C_{**})\,P_\alpha(j)}\Big),
             \qquad P_\alpha(j) = \frac{C_{j*}^\alpha}{\sum_k C_{k*}^\alpha}

3. **Truncated SVD** :math:`\mathrm{PPMI} \approx U_k S_k V_k^\top`; a piece's vector is its row of
   :math:`U_k S_k^{1/2}` (randomised subspace iteration, Halko, Martinsson & Tropp 2011).

Two uses:

- ``bert-from-scratch probe --checkpoint RUN --count-vectors CORPUS`` adds a row with these vectors, of the
  checkpoint's vocabulary and width, averaged over a text's pieces: on the general mix they read Rotten
  Tomatoes sentiment far better than the 10-minute checkpoint's features (docs/results.md, "Why it does not
  transfer");
- ``bert-from-scratch pretrain --embeddings-init counts`` starts BERT's word embeddings from the training
  documents' vectors (:func:`initial_word_embeddings`) instead of random ones; MLM + NSP then train everything
  as usual (docs/results.md has what it changes).

The counts are a dense (V, V) matrix, so the vocabulary is capped at :data:`MAX_VOCAB`.
"""
from __future__ import annotations

import numpy as np

MAX_VOCAB = 16_384           # a (V, V) float64 count matrix: 2 GiB at this size


#: pairs gathered before they are added to the counts: memory stays ~16 bytes x this, whatever the corpus's size
PAIRS_PER_CHUNK = 1 << 22


def cooccurrence_counts(sentences, vocab_size: int, window: int = 5) -> np.ndarray:
    """``sentences``: iterable of 1-D int arrays of piece ids -> (V, V) float64 counts, symmetric, 1/distance."""
    if window < 1:
        raise ValueError(f"window must be at least 1; got {window}")
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"count vectors need a dense {vocab_size} x {vocab_size} matrix; vocabularies above "
                         f"{MAX_VOCAB:,} pieces are not supported")
    counts = np.zeros(vocab_size * vocab_size)                                  # (V * V,) row-major i * V + j
    pair_index, weights, pending = [], [], 0

    def add_pending():
        # one pair after the other, in the order gathered: the same sums, to the bit, as one bincount of them all
        np.add.at(counts, np.concatenate(pair_index), np.concatenate(weights))
        pair_index.clear()
        weights.clear()

    for ids in sentences:
        ids = np.asarray(ids, dtype=np.int64)
        for d in range(1, min(window, len(ids) - 1) + 1):
            pair_index.append(ids[:-d] * vocab_size + ids[d:])                  # (len - d,)
            weights.append(np.full(len(ids) - d, 1.0 / d))
            pending += len(ids) - d
        if pending >= PAIRS_PER_CHUNK:
            add_pending()
            pending = 0
    if pair_index:
        add_pending()
    counts = counts.reshape(vocab_size, vocab_size)
    return counts + counts.T                                                    # both directions


def ppmi(counts: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """(V, V) co-occurrence counts -> (V, V) float32 positive PMI, contexts smoothed by ``alpha``."""
    total = counts.sum()
    rows = counts.sum(axis=1)                                                   # (V,) C_i*
    context = rows ** alpha
    context = context / context.sum()                                           # (V,) P_alpha(j)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts / total) - np.log(rows / total)[:, None] - np.log(context)[None, :]
    return np.where(np.isfinite(pmi), np.maximum(pmi, 0.0), 0.0).astype(np.float32)


def truncated_svd_vectors(matrix: np.ndarray, dim: int, iterations: int = 4, oversample: int = 32,
                          seed: int = 0) -> np.ndarray:
    """(V, V) matrix -> (V, dim) rows of U_k S_k^(1/2) of its rank-``dim`` truncated SVD (randomised)."""
    if not 1 <= dim <= matrix.shape[1]:
        raise ValueError(f"dim must be between 1 and {matrix.shape[1]}; got {dim}")
    k = min(dim + oversample, matrix.shape[1])
    q = np.linalg.qr(matrix @ np.random.default_rng(seed).standard_normal((matrix.shape[1], k)).astype(matrix.dtype))[0]
    for _ in range(iterations):                                                 # power iterations sharpen the range
        q = np.linalg.qr(matrix @ (matrix.T @ q))[0]                            # (V, k), orthonormal columns
    u, s, _ = np.linalg.svd(q.T @ matrix, full_matrices=False)                  # small (k, V) problem
    return (q @ u[:, :dim]) * np.sqrt(s[:dim])                                  # (V, dim)


def count_vectors(sentences, vocab_size: int, dim: int, window: int = 5, upweighted=None,
                  weight: float = 1.0) -> np.ndarray:
    """The three steps above: ``sentences`` (iterable of piece-id arrays) -> (V, dim) PPMI-SVD vectors. A vocabulary
    of fewer than ``dim`` pieces (a tiny corpus) gives V dimensions and zeros in the others.

    upweighted, weight: a subset of ``sentences`` (e.g. the task's own unlabelled text) whose pairs count ``weight``
    times in all, so that the vectors' few dimensions go to what that text's words share."""
    k = min(dim, vocab_size)
    counts = cooccurrence_counts(sentences, vocab_size, window)                                      # (V, V)
    if upweighted is not None and weight != 1.0:
        counts += (weight - 1.0) * cooccurrence_counts(upweighted, vocab_size, window)
    vectors = truncated_svd_vectors(ppmi(counts), k)                                                 # (V, k)
    return np.pad(vectors, ((0, 0), (0, dim - k)))                                                   # (V, dim)


def parse_upweight(spec: str) -> tuple[str, float]:
    """``"SOURCE=K"`` (``pretrain --count-upweight rt-train=10``) -> ``(SOURCE, K)``; a one-line ValueError else."""
    source, sep, weight = str(spec).partition("=")
    try:
        k = float(weight)
    except ValueError:
        k = float("nan")
    if not sep or not source or not 1 <= k <= 1000:
        raise ValueError(f"--count-upweight takes SOURCE=K, a part of --corpus and a weight from 1 to 1000 "
                         f"(e.g. rt-train=10); got {spec!r}")
    return source, k


def sentence_ids(tokenized_docs, tokenizer):
    """Documents -> sentences -> pieces (``tokenize_documents``' output) -> each sentence's piece ids (int64)."""
    return (np.asarray(tokenizer.convert_tokens_to_ids(sentence), dtype=np.int64)
            for doc in tokenized_docs for sentence in doc)


def initial_word_embeddings(vectors: np.ndarray, std: float) -> np.ndarray:
    """Count vectors (V, H) as BERT's initial word embeddings, float32: each column centred, all scaled to the
    init's standard deviation ``std`` (0.02), so that only the directions differ from a random init
    (``pretrain --embeddings-init counts``)."""
    vectors = vectors - vectors.mean(axis=0)
    return (vectors * (std / max(float(vectors.std()), 1e-12))).astype(np.float32)


def corpus_count_vectors(corpus: str, tokenizer, dim: int, window: int = 5, log=print) -> np.ndarray:
    """PPMI-SVD vectors (len(tokenizer), dim) of ``corpus`` (a ``--corpus`` name, e.g. the main job's mix)."""
    from ..data.corpora import load_documents
    from ..data.pretraining import tokenize_documents

    docs = load_documents(corpus)                       # every load checks it for the tasks' dev/test text
    log(f"count vectors: {len(tokenizer):,} pieces, {dim} dims, from {len(docs):,} documents of {corpus}")
    return count_vectors(sentence_ids(tokenize_documents(docs, tokenizer), tokenizer), len(tokenizer), dim, window)


def mean_vectors(vectors: np.ndarray, tokenizer, texts, max_length: int = 64) -> np.ndarray:
    """(N, dim) float64: each text's piece vectors averaged over its pieces (special tokens left out), as the
    encoder would see the text (``max_length`` pieces with [CLS] and [SEP])."""
    special_ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]"])
    out = []
    for i in range(0, len(texts), 1024):
        enc = tokenizer.encode_batch(list(texts[i:i + 1024]), max_length=max_length)
        ids = np.asarray(enc["input_ids"])                                      # (B, T)
        keep = (np.asarray(enc["attention_mask"]) == 1) & ~np.isin(ids, special_ids)   # (B, T)
        sums = np.einsum("bt,btd->bd", keep.astype(np.float64), vectors[ids].astype(np.float64))
        out.append(sums / np.maximum(keep.sum(axis=1, keepdims=True), 1))       # (B, dim)
    return np.concatenate(out) if out else np.zeros((0, vectors.shape[1]))
