"""The ``attention`` subcommand: draw a model's attention on a sentence.

    bert-from-scratch attention "The cat sat on the mat." --layer 2 --out att.png

:func:`add_attention_arguments` adds its arguments to a parser; :func:`cli_attention` runs it.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from ..viz.analysis import attention_rollout, head_statistics, plot_head_statistics
from ..viz.figures import FIGURE_FORMATS, save_figure
from ..viz.heatmaps import plot_attention_heatmap, plot_head_view, plot_model_view
from ..viz.html import save_attention_html
from ..viz.inputs import _select, stack_attentions
from .common import command, error

CLI_VIEWS = ("auto", "heatmap", "head", "model", "stats", "rollout")


def add_attention_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ``attention`` subcommand (run it with :func:`cli_attention`)."""
    parser.add_argument("text", help="the sentence to look at")
    parser.add_argument("--pair", default=None, metavar="TEXT", help="a second sentence (segment B)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="a known model name (all-MiniLM-L6-v2) or a checkpoint folder (default: %(default)s)")
    parser.add_argument("--layer", type=int, default=None, help="layer, counted from 0 (-1 = the last)")
    parser.add_argument("--head", type=int, default=None, help="head, counted from 0 (with --layer: one heatmap)")
    parser.add_argument("--view", choices=CLI_VIEWS, default="auto",
                        help="auto: heatmap with --layer and --head, head view with --layer, else model view")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figure (.png, .svg or .pdf)")
    parser.add_argument("--html", default=None, metavar="FILE", help="write the interactive view (.html)")
    parser.add_argument("--max-tokens", type=int, default=64, help="draw at most this many tokens (default 64)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate the input to this many tokens")
    return parser


def _cli_view(args) -> str:
    if args.view != "auto":
        return args.view
    if args.layer is not None and args.head is not None:
        return "heatmap"
    return "head" if args.layer is not None else "model"


@command
def cli_attention(args) -> int:
    """Draw the attention of ``args.model`` on ``args.text``; 0 on success, 2 on a user error."""
    if not args.out and not args.html:
        return error("nothing to write: give --out FILE.png (or .svg/.pdf) and/or --html FILE.html")
    if args.out and Path(args.out).suffix.lower() not in FIGURE_FORMATS:
        return error(f"--out {args.out}: the figure format must be one of {', '.join(FIGURE_FORMATS)}")
    if args.html and Path(args.html).suffix.lower() not in (".html", ".htm"):
        return error(f"--html {args.html}: the file name must end in .html")
    if args.max_tokens is not None and args.max_tokens < 1:
        return error(f"--max-tokens must be at least 1; got {args.max_tokens}")
    if args.head is not None and args.head < 0:
        return error(f"--head must be 0 or more (heads are counted from 0); got {args.head}")
    if args.layer is not None and args.layer < -1:
        return error(f"--layer must be 0 or more, or -1 for the last layer; got {args.layer}")
    if not 3 <= args.max_length <= 512:
        return error(f"--max-length must be in [3, 512] (BERT's position table has 512 entries); got {args.max_length}")
    if not args.text.strip():
        return error("the text is empty")
    from ..model import BertModel
    from ..pretrained import pretrained

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*of another head")   # a checkpoint's MLM/NSP heads
        model, tokenizer = pretrained(args.model, model_class=BertModel)
    enc = tokenizer.encode(args.text, args.pair, max_length=args.max_length)
    ids = np.asarray([enc.input_ids])                                   # (1, T)
    types = np.asarray([enc.token_type_ids])                            # (1, T)
    out = model.forward(ids, types, output_attentions=True)
    att = stack_attentions(out.attentions)                              # (L, H, T, T)
    tokens = list(enc.tokens)
    L, H = att.shape[:2]
    view = _cli_view(args)
    layer, = _select(args.layer if args.layer is not None else 0, L, "layer")
    if args.head is not None:
        _select(args.head, H, "head")
    if args.out:
        if view == "heatmap":
            fig = plot_attention_heatmap(att, tokens, layer, args.head if args.head is not None else 0,
                                         max_tokens=args.max_tokens)
        elif view == "head":
            fig = plot_head_view(att, tokens, layer, heads=args.head, max_tokens=args.max_tokens)
        elif view == "model":
            fig = plot_model_view(att, tokens, layers=args.layer, heads=args.head,
                                  max_tokens=min(args.max_tokens, 48))
        elif view == "stats":
            fig = plot_head_statistics(head_statistics(att, tokens))
        else:  # rollout
            rollout = attention_rollout(att)                         # (L, T, T)
            fig = plot_attention_heatmap(rollout[layer], tokens, max_tokens=args.max_tokens,
                                         title=f"attention rollout up to layer {layer}")
        save_figure(fig, args.out)
        print(f"wrote {args.out}")
    if args.html:
        html_view = "model" if view == "model" else "head"
        save_attention_html(args.html, att, tokens, view=html_view, layer=layer, max_tokens=args.max_tokens,
                            title=f"{args.model}: {args.text}")
        print(f"wrote {args.html}")
    return 0
