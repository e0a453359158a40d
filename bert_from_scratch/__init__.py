"""bert-from-scratch: BERT on NumPy with every forward and backward pass written by hand.

The main pieces, each importable from the package top:

- ``BertConfig``, ``BertForPreTraining``, ``BertForSequenceClassification``, ``BertModel`` (model.py)
- ``attention_forward`` / ``attention_backward``: the attention core with NumPy, Numba and CUDA backends
- ``gradcheck``: the finite-difference checker every backward is tested with
- ``Tokenizer``: WordPiece, from scratch, with a vocabulary trainer
- ``AdamW``, ``linear_warmup_decay``, ``clip_grad_norm``; ``pretrain`` (the training loop)
- ``pretrained``: real pretrained weights (all-MiniLM-L6-v2) or any Hugging Face BERT folder
"""
from .attention import attention_backward, attention_forward
from .config import BertConfig
from .gradcheck import gradcheck
from .model import BertForPreTraining, BertForSequenceClassification, BertModel
from .optim import AdamW, clip_grad_norm, linear_warmup_decay
from .pretrained import pretrained, sentence_embedding
from .tokenizer import Tokenizer
from .train import pretrain

__version__ = "0.1.0"
__all__ = [
    "attention_forward", "attention_backward", "BertConfig", "BertForPreTraining", "BertForSequenceClassification",
    "BertModel", "gradcheck", "Tokenizer", "AdamW", "clip_grad_norm", "linear_warmup_decay", "pretrain",
    "pretrained", "sentence_embedding",
]
