"""``bert-from-scratch fill-mask``: what a pretrained masked-LM head predicts for each [MASK]."""
from __future__ import annotations

from .common import command, error


def add_fill_mask_arguments(p):
    p.add_argument("text", help="text with one or more [MASK] tokens")
    p.add_argument("--checkpoint", required=True, help="a pretraining run folder or checkpoint folder")
    p.add_argument("--top-k", type=int, default=5, help="predictions shown per [MASK] (1 to the vocabulary size)")


def word_number(text: str, char_offset: int) -> int:
    """1-based number of the whitespace-separated word of ``text`` that starts at or covers ``char_offset``."""
    return len(text[:char_offset].split()) + (1 if char_offset == 0 or text[char_offset - 1].isspace() else 0)


def locate_masks(tokenizer, text: str, max_length: int):
    """``(encoding, kept, cut)`` of ``text`` truncated to ``max_length``.

    ``kept``: the token positions of the ``[MASK]`` s that survive truncation, with each one's
    character span in ``text``; ``cut``: ``(word number, token position)`` of those truncation
    cut off (found in the untruncated encoding, through its offsets).
    """
    whole = tokenizer.encode(text, return_offsets_mapping=True)
    masks = [i for i, t in enumerate(whole.input_ids) if t == tokenizer.mask_token_id]
    enc = tokenizer.encode(text, max_length=max_length, return_offsets_mapping=True)
    kept = [(i, whole.offsets[i]) for i in masks if i < len(enc) - 1]          # the last token is [SEP]
    cut = [(word_number(text, whole.offsets[i][0]), i, len(whole)) for i in masks if i >= len(enc) - 1]
    return enc, kept, cut


def fill(text: str, spans_and_tokens) -> str:
    """``text`` with each ``(start, end)`` span replaced by its token (``##`` dropped)."""
    out, pos = [], 0
    for (start, end), token in sorted(spans_and_tokens):
        out += [text[pos:start], token.replace("##", "")]
        pos = end
    return "".join(out) + text[pos:]


@command
def cli_fill_mask(args) -> int:
    """``bert-from-scratch fill-mask``: the top predictions for each [MASK], and the filled sentence."""
    import warnings

    import numpy as np

    from ..checkpoint import resolve_model_folder
    from ..data.tokenizer import Tokenizer
    from ..model import BertForPreTraining
    from ..nn.layers import softmax_forward

    if args.top_k < 1:
        return error(f"--top-k must be at least 1; got {args.top_k}")
    folder = resolve_model_folder(args.checkpoint)
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        return error(f"{folder} has no vocab.txt (nor tokenizer.json): fill-mask needs the vocabulary the model "
                     f"was trained with")
    tokenizer = Tokenizer.from_pretrained(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForPreTraining.from_pretrained(folder)
    if any("cls.predictions" in str(w.message) for w in caught):
        return error(f"{folder} has no masked-LM head (an encoder-only model): fill-mask needs a pretraining "
                      f"checkpoint")
    if len(tokenizer) != model.config.vocab_size:
        return error(f"the vocabulary has {len(tokenizer)} tokens but the model's vocab_size is "
                      f"{model.config.vocab_size}: they do not belong together")
    if args.top_k > model.config.vocab_size:
        return error(f"--top-k must be at most the vocabulary size, {model.config.vocab_size}; got {args.top_k}")
    max_length = model.config.max_position_embeddings
    enc, kept, cut = locate_masks(tokenizer, args.text, max_length)
    if cut:
        word, pos, n = cut[0]
        message = (f"the [MASK] at word {word} is beyond max length {max_length}: it is token {pos + 1} of {n}, "
                   f"beyond the model's {max_length} positions, so truncation cut it off")
        if not kept:
            return error(message + "; shorten the text before it")
        print(f"note: {message}; it is not filled")
    if not kept:
        return error("the text has no [MASK] token to fill")
    out = model.forward(np.array([enc.input_ids]), np.array([enc.token_type_ids]), np.array([enc.attention_mask]))
    best = []
    for n, (pos, span) in enumerate(kept):
        probs, _ = softmax_forward(out.prediction_logits[0, pos].astype(np.float64))       # (V,)
        top = np.argsort(-probs)[: args.top_k]
        if len(kept) > 1:
            print(f"[MASK] #{n + 1}:")
        for i in top:
            token = tokenizer.convert_ids_to_tokens(int(i))
            print(f"  {probs[i]:6.1%}  {token:<15} {fill(args.text, [(span, token)])}")
        best.append((span, tokenizer.convert_ids_to_tokens(int(top[0]))))
    if len(kept) > 1:
        print(f"filled: {fill(args.text, best)}")
    return 0
