"""The one seam between the readable reference and the fast kernels.

A :class:`Backend` is a table of the operations whose implementation differs between array
libraries and kernels: the elementwise layers (GELU, LayerNorm, dropout, the embeddings' sum of three lookups and
their scatter-add), the fused tails of the encoder blocks (bias + GELU; bias + dropout + residual +
LayerNorm), the attention core, the moves between the Q/K/V projection's layout and the heads' (with the
projection's bias), the cross-entropy of the masked-LM head and the AdamW update.
Everything else (the matmuls of linear layers, softmax, tanh, the small heads' cross-entropies) is the
same array code everywhere and is called directly.

A model picks its backend once, when it is built or moved (``BertModel(cfg, backend="numba")``,
``model.to("cupy")``); its blocks call ``backend.gelu_forward(...)`` and never test which one it is.
The optimizer takes the model's backend too. Every function of a backend has the signature of its
reference twin in ``nn/layers.py``, ``nn/heads.py``, ``nn/attention.py`` and ``training/optim.py``.

==========  ==========================================================  ===========================
name        elementwise layers and AdamW                                attention
==========  ==========================================================  ===========================
``numpy``   the reference (``nn/layers.py``), NumPy arrays               reference (stores T x T)
``numba``   fused Numba kernels (``kernels/numba_layers.py``,            FlashAttention-2 style
            ``kernels/numba_fused.py``, ``kernels/numba_loss.py``,       (``kernels/numba_attention.py``)
            ``kernels/numba_heads.py``, ``kernels/numba_optim.py``)
``cupy``    the reference code on CuPy arrays                            CUDA kernel (``kernels/attention.cu``)
``auto``    ``cupy`` for CuPy arrays, else ``numba`` if Numba imports, else ``numpy``
==========  ==========================================================  ===========================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import attention as reference_attention
from . import heads
from . import layers as reference
from .xp import is_cupy_array

BACKENDS = ("auto", "numpy", "numba", "cupy")


@dataclass(frozen=True)
class Backend:
    """The operations a model and its optimizer call through their backend (see the module docstring)."""

    name: str
    gelu_forward: Callable
    gelu_backward: Callable
    layernorm_forward: Callable
    layernorm_backward: Callable
    dropout_forward: Callable
    dropout_backward: Callable
    scatter_add_rows: Callable
    attention_forward: Callable          # (q, k, v, mask, dropout_p, seed, row_offset, q_pos) -> (out, cache)
    attention_backward: Callable         # (dout, cache) -> (dq, dk, dv)
    adamw_update: Callable               # see training/optim.py: adamw_update
    cross_entropy_forward: Callable      # (logits, labels) -> (mean loss, cache)
    cross_entropy_backward: Callable     # (dloss, cache) -> dlogits
    bias_gelu_forward: Callable          # (h, bias) -> (gelu(h + bias), cache)
    bias_gelu_backward: Callable         # (dg, cache) -> (dh, dbias)
    bias_dropout_add_layernorm_forward: Callable   # (o, bias, x, gamma, beta, p, rng, training, eps, row_offset, row_ids)
    #                                                -> (y, cache); cache[0] is a layernorm_backward cache
    bias_dropout_add_layernorm_backward: Callable  # (dy, cache) -> (d_o, d_x, dbias, dgamma, dbeta)
    split_heads_forward: Callable        # (y, bias, n_parts, n_heads) -> P x (B, nh, T, d): nn/heads.py
    split_heads_backward: Callable       # (P x (B, nh, T, d)) -> (dy (B, T, P*H), dbias)
    embedding_sum: Callable              # (ids, token_type_ids, word, token_type, position) -> (B, T, H)

    @property
    def stores_attention_probabilities(self) -> bool:
        """Only the reference keeps the (B, nh, T, T) probabilities and their gradient (for plots)."""
        return self.name == "numpy"

    @property
    def attention_at_query_rows(self) -> bool:
        """Whether ``attention_forward`` takes ``q_pos``: queries at some rows only, keys and values at all (the
        reference and the Numba kernel; the CUDA kernel computes every row)."""
        return self.name in ("numpy", "numba")

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _reference_ops(name: str, attention_forward, attention_backward) -> Backend:
    from ..training.optim import adamw_update

    return Backend(name, reference.gelu_forward, reference.gelu_backward, reference.layernorm_forward,
                   reference.layernorm_backward, reference.dropout_forward, reference.dropout_backward,
                   reference.scatter_add_rows, attention_forward, attention_backward, adamw_update,
                   reference.cross_entropy_forward, reference.cross_entropy_backward,
                   reference.bias_gelu_forward, reference.bias_gelu_backward,
                   reference.bias_dropout_add_layernorm_forward, reference.bias_dropout_add_layernorm_backward,
                   heads.split_heads_forward, heads.split_heads_backward, reference.embedding_sum)


def _numpy() -> Backend:
    return _reference_ops("numpy", reference_attention.attention_forward_reference,
                          reference_attention.attention_backward_reference)


def _cupy() -> Backend:
    from ..kernels import cuda_attention

    return _reference_ops("cupy", cuda_attention.attention_forward, cuda_attention.attention_backward)


def _numba() -> Backend:
    from ..kernels import numba_attention, numba_fused, numba_heads, numba_layers, numba_loss, numba_optim

    return Backend("numba", numba_layers.gelu_forward, numba_layers.gelu_backward, numba_layers.layernorm_forward,
                   numba_layers.layernorm_backward, numba_layers.dropout_forward, numba_layers.dropout_backward,
                   numba_layers.scatter_add_rows, numba_attention.attention_forward,
                   numba_attention.attention_backward, numba_optim.adamw_update,
                   numba_loss.cross_entropy_forward, numba_loss.cross_entropy_backward,
                   numba_fused.bias_gelu_forward, numba_fused.bias_gelu_backward,
                   numba_fused.bias_dropout_add_layernorm_forward, numba_fused.bias_dropout_add_layernorm_backward,
                   numba_heads.split_heads_forward, numba_heads.split_heads_backward, numba_layers.embedding_sum)


_BUILDERS = {"numpy": _numpy, "numba": _numba, "cupy": _cupy}
_built: dict[str, Backend] = {}


def numba_available() -> bool:
    try:
        from ..kernels import numba_layers  # noqa: F401
        return True
    except ImportError:  # pragma: no cover - numba is a dependency
        return False


def get_backend(name="auto", like=None) -> Backend:
    """The :class:`Backend` called ``name`` (a Backend passes through).

    ``like``: an array of the model (its parameters); "auto" picks "cupy" for a CuPy array, else
    "numba" when Numba imports, else "numpy". A CPU backend asked for CuPy arrays, or "cupy" for
    NumPy arrays, is refused with a one-line error.
    """
    if isinstance(name, Backend):
        backend = name
    else:
        if name == "cuda":
            name = "cupy"
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        if name == "auto":
            name = "cupy" if is_cupy_array(like) else ("numba" if numba_available() else "numpy")
        if name not in _built:
            _built[name] = _BUILDERS[name]()
        backend = _built[name]
    if like is not None:
        on_gpu = is_cupy_array(like)
        if on_gpu and backend.name != "cupy":
            raise ValueError(f"backend {backend.name!r} runs on the CPU but the model's arrays are on the GPU; "
                             f"use 'cupy' or 'auto'")
        if not on_gpu and backend.name == "cupy":
            raise ValueError("backend 'cupy' needs the model on the GPU: model.to('cupy')")
    return backend
