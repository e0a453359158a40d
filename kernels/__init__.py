"""Fast kernels for BERT's hot path, importable as ``bert_from_scratch.kernels``.

- ``numba_attention``: fused attention (online softmax, FlashAttention-2 style) on the CPU.
- ``numba_elementwise``: fused GELU, LayerNorm and embedding scatter-add, forward and backward.
- ``cuda_attention`` + ``attention.cu``: the same algorithm in CUDA, loaded with ``cupy.RawModule``.

The NumPy reference in ``bert_from_scratch.attention`` is the truth these are checked against.
"""
