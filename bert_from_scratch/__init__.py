"""bert-from-scratch: BERT on NumPy with every forward and backward pass written by hand.

The main pieces, each importable from the package top (the README's "Where things are" maps the folders):

- ``BertConfig`` (config.py), ``BertForPreTraining``, ``BertForSequenceClassification``, ``BertModel`` (model/)
- ``BertForMaskedLM``, ``BertForTokenClassification``, ``BertForQuestionAnswering``, ``BertForMultipleChoice``
  (model/task_models.py)
- ``get_backend``: the one seam between the reference layers and the kernels (nn/backend.py)
- ``attention_forward`` / ``attention_backward``: the attention core on any backend (nn/attention.py)
- ``gradcheck``: the finite-difference checker every backward is tested with (nn/gradcheck.py)
- ``Tokenizer``: WordPiece, from scratch, with a vocabulary trainer (data/)
- ``AdamW``, ``linear_warmup_decay``, ``clip_grad_norm`` (training/optim.py); ``pretrain`` (training/pretraining.py)
- ``pretrained``: real pretrained weights (all-MiniLM-L6-v2) or any Hugging Face BERT folder
"""
# thread settings, made before NumPy and Numba load (runtime_env.py says why; a value the user set wins)
from . import runtime_env as _runtime_env

_runtime_env.apply()

from .config import BertConfig  # noqa: E402
from .data.tokenizer import Tokenizer  # noqa: E402
from .model import BertForPreTraining, BertForSequenceClassification, BertModel  # noqa: E402
from .model import (BertForMaskedLM, BertForMultipleChoice, BertForQuestionAnswering,  # noqa: E402
                    BertForTokenClassification)
from .nn.attention import attention_backward, attention_forward  # noqa: E402
from .nn.backend import get_backend  # noqa: E402
from .nn.gradcheck import gradcheck  # noqa: E402
from .pretrained import pretrained, sentence_embedding  # noqa: E402
from .pipelines import pipeline  # noqa: E402
from .training.optim import AdamW, clip_grad_norm, linear_warmup_decay  # noqa: E402
from .training.pretraining import pretrain  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "attention_forward", "attention_backward", "BertConfig", "BertForPreTraining", "BertForSequenceClassification",
    "BertModel", "gradcheck", "Tokenizer", "AdamW", "clip_grad_norm", "linear_warmup_decay", "pretrain",
    "pretrained", "sentence_embedding", "pipeline", "get_backend", "BertForMaskedLM", "BertForTokenClassification",
    "BertForQuestionAnswering", "BertForMultipleChoice",
]
