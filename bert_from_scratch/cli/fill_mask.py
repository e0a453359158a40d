"""``bert-from-scratch fill-mask``: what a pretrained masked-LM head predicts for each [MASK]."""
from __future__ import annotations

from ..constants import VOCAB_NAME
from .common import command, error


def add_fill_mask_arguments(p):
    p.add_argument("text", help="text with one or more [MASK] tokens")
    p.add_argument("--checkpoint", required=True, help="a pretraining run folder or checkpoint folder")
    p.add_argument("--top-k", type=int, default=5, help="predictions shown per [MASK] (1 to the vocabulary size)")


@command
def cli_fill_mask(args) -> int:
    """``bert-from-scratch fill-mask``: the top predictions for each [MASK]."""
    import numpy as np

    from ..checkpoint import resolve_model_folder
    from ..data.tokenizer import Tokenizer
    from ..model import BertForPreTraining
    from ..nn.layers import softmax_forward

    if args.top_k < 1:
        return error(f"--top-k must be at least 1; got {args.top_k}")
    folder = resolve_model_folder(args.checkpoint)
    if not (folder / VOCAB_NAME).is_file():
        return error(f"{folder} has no {VOCAB_NAME}: fill-mask needs the vocabulary the model was trained with")
    tokenizer = Tokenizer.from_vocab_file(folder / VOCAB_NAME)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForPreTraining.from_pretrained(folder)
    if any("cls.predictions" in str(w.message) for w in caught):
        return error(f"{folder} has no masked-LM head (an encoder-only model): fill-mask needs a pretraining "
                      f"checkpoint")
    if len(tokenizer) != model.config.vocab_size:
        return error(f"vocab.txt has {len(tokenizer)} tokens but the model's vocab_size is "
                      f"{model.config.vocab_size}: they do not belong together")
    if args.top_k > model.config.vocab_size:
        return error(f"--top-k must be at most the vocabulary size, {model.config.vocab_size}; got {args.top_k}")
    max_length = model.config.max_position_embeddings
    enc = tokenizer.encode(args.text, max_length=max_length)
    ids = np.array([enc.input_ids])
    positions = np.nonzero(ids[0] == tokenizer.mask_token_id)[0]
    if len(positions) == 0:
        whole = tokenizer.encode(args.text).input_ids
        if tokenizer.mask_token_id in whole:
            first = whole.index(tokenizer.mask_token_id)
            return error(f"the text's [MASK] is token {first + 1} of {len(whole)}, beyond the model's {max_length} "
                         f"positions: truncation cut it off; shorten the text before it")
        return error("the text has no [MASK] token to fill")
    out = model.forward(ids, np.array([enc.token_type_ids]), np.array([enc.attention_mask]))
    for n, pos in enumerate(positions):
        probs, _ = softmax_forward(out.prediction_logits[0, pos].astype(np.float64))       # (V,)
        top = np.argsort(-probs)[: args.top_k]
        if len(positions) > 1:
            print(f"[MASK] #{n + 1}:")
        for i in top:
            token = tokenizer.convert_ids_to_tokens(int(i))
            filled = args.text.replace("[MASK]", token.replace("##", ""), 1) if len(positions) == 1 else token
            print(f"  {probs[i]:6.1%}  {token:<15} {filled if len(positions) == 1 else ''}")
    return 0
