r"""The checks behind ``bert-from-scratch check N``: every chapter's parts, in one table.

A part names the learner's functions it grades and the check that grades them. The checks live
with the other checks of their part of the book:

- :mod:`.checks_data`: tokenization (1), embeddings (2), the pretraining data recipe (8);
- :mod:`.checks_model`: attention (3), multi-head attention (4), LayerNorm and GELU (5), the
  encoder block (6), the heads and their losses (7);
- :mod:`.checks_training`: the training loop (9), kernels (10), visualisation (11), fine-tuning (12);
- :mod:`.checks_parallel`: data-parallel training (13);
- :mod:`.checks_tasks`: token classification (14), question answering (15).

Each check takes the learner's module, calls its functions on fixed random inputs and either
returns a short success note or raises :class:`~.grader.Wrong` with what is wrong. Forward
passes are compared with the package's reference code; backward passes go through the
finite-difference gradient checker (float64); the masking recipe is checked by statistics.
Every check also passes read-only inputs (a write into an input or a cache is reported), checks
that float32 stays float32 where the package's layers keep it, feeds softmax-like functions
scores ~1000 and calls the edge cases the stubs' docstrings promise.
"""
from __future__ import annotations

from .checks_data import (check_basic_tokenize, check_embeddings_backward, check_embeddings_forward,
                          check_mask_tokens, check_wordpiece)
from .checks_model import (check_attention_backward, check_attention_forward, check_attention_mask_bias,
                           check_cross_entropy_backward, check_cross_entropy_forward, check_ffn_block_backward,
                           check_ffn_block_forward, check_gather_masked, check_gelu_backward, check_gelu_forward,
                           check_layernorm_backward, check_layernorm_forward, check_merge_heads, check_split_heads)
from .checks_training import (check_adamw_step, check_attention_entropy, check_attention_rollout,
                              check_classifier_backward, check_classifier_forward, check_clip_by_global_norm,
                              check_macro_f1, check_online_softmax_update, check_tiled_attention,
                              check_warmup_linear_lr)
from .checks_tasks import (check_align_labels, check_best_span, check_span_loss_backward, check_span_loss_forward,
                          check_token_classifier_backward, check_token_classifier_forward)
from .checks_parallel import check_loss_weights, check_ring_allreduce
from .grader import Chapter, Part

# =======================================================================================
# The registry
# =======================================================================================
CHAPTERS = {c.number: c for c in [
    Chapter(1, "tokenization", "tokenization (WordPiece)", [
        Part("basic_tokenize", ("basic_tokenize",), check_basic_tokenize),
        Part("wordpiece", ("wordpiece",), check_wordpiece)]),
    Chapter(2, "embeddings", "embeddings", [
        Part("embeddings_forward", ("embeddings_forward",), check_embeddings_forward),
        Part("embeddings_backward", ("embeddings_forward", "embeddings_backward"), check_embeddings_backward)]),
    Chapter(3, "attention", "scaled dot-product attention and its backward", [
        Part("attention_forward", ("attention_forward",), check_attention_forward),
        Part("attention_backward", ("attention_forward", "attention_backward"), check_attention_backward)]),
    Chapter(4, "multihead", "multi-head attention and masking", [
        Part("split_heads", ("split_heads",), check_split_heads),
        Part("merge_heads", ("merge_heads",), check_merge_heads),
        Part("attention_mask_bias", ("attention_mask_bias",), check_attention_mask_bias)]),
    Chapter(5, "layernorm_gelu", "LayerNorm, GELU and the feed-forward block", [
        Part("layernorm_forward", ("layernorm_forward",), check_layernorm_forward),
        Part("layernorm_backward", ("layernorm_forward", "layernorm_backward"), check_layernorm_backward),
        Part("gelu_forward", ("gelu_forward",), check_gelu_forward),
        Part("gelu_backward", ("gelu_forward", "gelu_backward"), check_gelu_backward)]),
    Chapter(6, "encoder", "the encoder layer and the residual stream", [
        Part("ffn_block_forward", ("ffn_block_forward",), check_ffn_block_forward),
        Part("ffn_block_backward", ("ffn_block_forward", "ffn_block_backward"), check_ffn_block_backward)]),
    Chapter(7, "heads_losses", "the MLM and NSP heads and their losses", [
        Part("gather_masked", ("gather_masked",), check_gather_masked),
        Part("cross_entropy_forward", ("cross_entropy_forward",), check_cross_entropy_forward),
        Part("cross_entropy_backward", ("cross_entropy_forward", "cross_entropy_backward"),
             check_cross_entropy_backward)]),
    Chapter(8, "pretraining_data", "the pretraining data recipe", [
        Part("mask_tokens", ("mask_tokens",), check_mask_tokens)]),
    Chapter(9, "training", "the training loop: AdamW, warmup, clipping", [
        Part("adamw_step", ("adamw_step",), check_adamw_step),
        Part("warmup_linear_lr", ("warmup_linear_lr",), check_warmup_linear_lr),
        Part("clip_by_global_norm", ("clip_by_global_norm",), check_clip_by_global_norm)]),
    Chapter(10, "kernels", "kernels: tiled online-softmax attention", [
        Part("online_softmax_update", ("online_softmax_update",), check_online_softmax_update),
        Part("tiled_attention", ("tiled_attention",), check_tiled_attention)]),
    Chapter(11, "visualization", "what a pretrained BERT attends to", [
        Part("attention_entropy", ("attention_entropy",), check_attention_entropy),
        Part("attention_rollout", ("attention_rollout",), check_attention_rollout)]),
    Chapter(12, "finetuning", "fine-tuning a classifier", [
        Part("classifier_forward", ("classifier_forward",), check_classifier_forward),
        Part("classifier_backward", ("classifier_forward", "classifier_backward"), check_classifier_backward),
        Part("macro_f1", ("macro_f1",), check_macro_f1)]),
    Chapter(13, "data_parallel", "data-parallel training: the ring allreduce and exact averaging", [
        Part("ring_allreduce", ("ring_allreduce",), check_ring_allreduce),
        Part("loss_weights", ("loss_weights",), check_loss_weights)]),
    Chapter(14, "token_classification", "token classification: labels per word", [
        Part("align_labels", ("align_labels",), check_align_labels),
        Part("token_classifier_forward", ("token_classifier_forward",), check_token_classifier_forward),
        Part("token_classifier_backward", ("token_classifier_forward", "token_classifier_backward"),
             check_token_classifier_backward)]),
    Chapter(15, "question_answering", "question answering: the span loss and decoding", [
        Part("span_loss_forward", ("span_loss_forward",), check_span_loss_forward),
        Part("span_loss_backward", ("span_loss_forward", "span_loss_backward"), check_span_loss_backward),
        Part("best_span", ("best_span",), check_best_span)]),
]}
