"""Fast kernels for BERT's hot path, importable as ``bert_from_scratch.kernels``.

A leaf: nothing here imports from ``bert_from_scratch``. ``bert_from_scratch/nn/backend.py`` picks
these up as a whole when a model runs with ``backend="numba"`` or ``"cupy"``.

- ``kernel_args``: what the reference and every kernel share (mask value, the dropout hash, input checks).
- ``numba_math``: fast-math flags, the hash jitted, a vectorisable exp and row maximum.
- ``numba_cache``: drops Numba's cached kernels when any source here changed (a kernel inlines others).
- ``numba_attention``: fused attention (online softmax, FlashAttention-2 style) on the CPU.
- ``numba_elementwise``: fused GELU, LayerNorm, dropout kernels, the embeddings' sum and scatter-add.
- ``numba_layers``: those kernels behind the signatures of the reference layers (``nn/layers.py``).
- ``numba_fused``: the blocks' fused tails: bias + GELU, and bias + dropout + residual + LayerNorm.
- ``numba_loss``: the masked-LM cross-entropy (softmax, loss and gradient in one pass over the logits).
- ``numba_optim``: AdamW as one fused loop, bit-identical to the reference update.
- ``cuda_attention`` + ``attention.cu``: the attention algorithm in CUDA, loaded with ``cupy.RawModule``.

The NumPy reference in ``bert_from_scratch/nn/`` is the truth these are checked against.
"""
