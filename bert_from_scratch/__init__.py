"""bert-from-scratch: BERT on NumPy with every forward and backward pass written by hand."""
from .attention import attention_backward, attention_forward

__version__ = "0.1.0"
__all__ = ["attention_forward", "attention_backward"]
