"""bert-from-scratch: BERT on NumPy with every forward and backward pass written by hand.

The main pieces, each importable from the package top:

- ``BertConfig``, ``BertForPreTraining``, ``BertForSequenceClassification``, ``BertModel`` (model.py)
- ``attention_forward`` / ``attention_backward``: the attention core with NumPy, Numba and CUDA backends
- ``gradcheck``: the finite-difference checker every backward is tested with
- ``Tokenizer``: WordPiece, from scratch, with a vocabulary trainer
- ``AdamW``, ``linear_warmup_decay``, ``clip_grad_norm``; ``pretrain`` (the training loop)
- ``pretrained``: real pretrained weights (all-MiniLM-L6-v2) or any Hugging Face BERT folder
"""
import os as _os

# Numba's parallel kernels run on GNU OpenMP threads, which by default busy-wait after each
# kernel; on a 2-core machine they then take the cores that OpenBLAS's matmul threads need next.
# Letting them sleep made the tiny model's training step (B=128, T=64) 35% faster on the
# development VM: 0.42 -> 0.28 s. It must be set before Numba starts its thread pool (the
# first parallel kernel); a value the user has set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _make_kernels_importable():
    """``kernels/`` lives at the top of the repository and is installed as ``bert_from_scratch.kernels``
    (pyproject.toml's package-dir). When the package is imported straight from a checkout instead
    (no install, or an editable install that only puts the checkout on sys.path), register it here."""
    import importlib.util
    import sys
    from pathlib import Path

    name = __name__ + ".kernels"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "kernels"
    if not (folder / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_make_kernels_importable()

from .attention import attention_backward, attention_forward  # noqa: E402
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
