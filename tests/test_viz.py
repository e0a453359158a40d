"""Attention visualisation: figures and HTML hold the right content; statistics, rollout and
attribution equal values computed by hand; the checkers reject planted wrong answers."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from bert_from_scratch import viz  # noqa: E402

TOKENS = ["[CLS]", "a", ",", "b", "[SEP]"]


def random_attentions(L=2, B=2, H=3, T=5, seed=0):
    """A model-shaped tuple of L arrays (B, H, T, T) whose rows are softmax distributions."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(L, B, H, T, T)) * 2.0
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    return tuple(probs[l] for l in range(L))


def hand_attention():
    """(1, 3, 5, 5) for TOKENS: head 0 = previous token ([CLS] to itself), head 1 = uniform,
    head 2 = half on [CLS], half on [SEP]."""
    prev = np.zeros((5, 5))
    prev[0, 0] = 1.0
    for i in range(1, 5):
        prev[i, i - 1] = 1.0
    uniform = np.full((5, 5), 0.2)
    cls_sep = np.zeros((5, 5))
    cls_sep[:, 0] = cls_sep[:, 4] = 0.5
    return np.stack([prev, uniform, cls_sep])[None]


def plt_close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


# -------------------------------------------------------------------------------- inputs
def test_stack_attentions_takes_the_sequence_and_crops_padding():
    atts = random_attentions(L=2, B=2, H=3, T=5)
    stacked = viz.stack_attentions(atts, batch_index=1)
    assert stacked.shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(stacked[1, 2], atts[1][1, 2])
    assert viz.stack_attentions(atts, length=3).shape == (2, 3, 3, 3)
    assert viz.stack_attentions(np.eye(4)).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="batch_index"):
        viz.stack_attentions(atts, batch_index=2)
    with pytest.raises(ValueError, match="square"):
        viz.stack_attentions(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        viz.stack_attentions(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="token labels"):
        viz.plot_attention_heatmap(atts, TOKENS[:4])


# -------------------------------------------------------------------------------- statistics
def test_head_statistics_equal_values_computed_by_hand():
    stats = viz.head_statistics(hand_attention(), TOKENS)
    assert set(stats) == set(viz.STATISTICS)
    expected = {  # per head: previous-token, uniform, [CLS]/[SEP]
        "cls": [2 / 5, 0.2, 0.5],          # rows 0 and 1 put 1 on [CLS]
        "sep": [0.0, 0.2, 0.5],
        "punct": [1 / 5, 0.2, 0.0],        # row 3 ("b") reads "," fully
        "prev": [1.0, 0.2, 0.5 / 4],       # only row 1 -> [CLS] is a previous-token edge in head 2
        "next": [0.0, 0.2, 0.5 / 4],       # only row 3 -> [SEP]
        "entropy": [0.0, np.log(5), np.log(2)],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(stats[name][0], values, atol=1e-12, err_msg=name)


def test_statistics_checker_rejects_a_transposed_attention():
    att = hand_attention()
    transposed = att.swapaxes(-1, -2)           # keys x queries: columns sum to 1, rows do not
    with pytest.raises(ValueError, match="transposed"):
        viz.head_statistics(transposed, TOKENS)
    with pytest.raises(ValueError, match="negative"):
        viz.check_attention_probabilities(att - 0.5)
    viz.check_attention_probabilities(att)      # the right orientation passes
    # unchecked, the transposed map gives a wrong answer: the previous-token head looks like "next"
    wrong = viz.head_statistics(transposed, TOKENS, check=False)
    assert wrong["prev"][0, 0] == 0.0 and wrong["next"][0, 0] == 1.0


def test_punctuation_tokens():
    assert [viz.is_punctuation_token(t) for t in [".", ",", "##.", "...", "'", "a", "[CLS]", "'s", "##"]] == \
        [True, True, True, True, True, False, False, False, False]


def test_statistics_plot_has_one_panel_per_statistic():
    stats = viz.head_statistics(random_attentions(L=3, B=1, H=4, T=6), ["[CLS]", "x", ".", "y", "z", "[SEP]"])
    fig = viz.plot_head_statistics(stats)
    assert len(fig.axes) == len(viz.STATISTICS)
    assert [ax.get_title() for ax in fig.axes] == [viz.STATISTIC_TITLES[s] for s in viz.STATISTICS]
    points = fig.axes[0].collections                          # one scatter per layer, H points each
    assert len(points) == 3 and all(len(p.get_offsets()) == 4 for p in points)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), stats["cls"].mean(axis=1))
    plt_close(fig)


# -------------------------------------------------------------------------------- rollout
def test_rollout_of_identity_attention_is_identity():
    att = np.broadcast_to(np.eye(6), (4, 3, 6, 6))
    rollout = viz.attention_rollout(att)
    assert rollout.shape == (4, 6, 6)
    np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(6), (4, 6, 6)), atol=1e-15)


def test_rollout_equals_hand_computation_and_order_matters():
    # layer 0 (heads averaged): both tokens read token 0; layer 1: both read token 1
    layer0 = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    layer1 = np.array([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    rollout = viz.attention_rollout(np.stack([layer0, layer1]))
    # 0.5 A + 0.5 I:  A0^ = [[1, 0], [.5, .5]],  A1^ = [[.5, .5], [0, 1]];  R = A1^ A0^
    np.testing.assert_allclose(rollout[0], [[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(rollout[1], [[0.75, 0.25], [0.5, 0.5]])
    # the wrong order (A0^ A1^ = [[.5, .5], [.25, .75]]) would differ: the test can fail
    assert not np.allclose(rollout[1], np.array([[1.0, 0.0], [0.5, 0.5]]) @ np.array([[0.5, 0.5], [0.0, 1.0]]))
    # head fusion: averaging [[1,0],[1,0]] with [[0,1],[0,1]] gives uniform, rollout stays uniform
    mixed = np.stack([layer0[0], layer1[0]])[None]
    np.testing.assert_allclose(viz.attention_rollout(mixed)[0], [[0.75, 0.25], [0.25, 0.75]])
    with pytest.raises(ValueError, match="head_fusion"):
        viz.attention_rollout(mixed, head_fusion="median")


# -------------------------------------------------------------------------------- attribution
def test_attribution_equals_hand_computation():
    A = np.array([[0.5, 0.5], [1.0, 0.0]])[None, None]           # (1, 1, 2, 2)
    G = np.array([[2.0, -4.0], [1.0, 3.0]])[None, None]
    raw = viz.attention_attribution(A, G, normalize=None)
    np.testing.assert_allclose(raw[0, 0], [[1.0, 2.0], [1.0, 0.0]])   # |A * G|
    np.testing.assert_allclose(viz.attention_attribution(A, G)[0, 0], [[0.25, 0.5], [0.25, 0.0]])
    assert viz.head_importance(raw)[0, 0] == 4.0
    # per-layer normalisation: a second layer with 10x the gradient gets the same shares
    two = viz.attention_attribution(np.concatenate([A, A]), np.concatenate([G, 10 * G]), normalize="layer")
    np.testing.assert_allclose(two[0], two[1])
    np.testing.assert_allclose(two.sum(axis=(1, 2, 3)), [1.0, 1.0])
    # model-level normalisation: the second layer holds 10/11 of the total
    np.testing.assert_allclose(viz.head_importance(
        viz.attention_attribution(np.concatenate([A, A]), np.concatenate([G, 10 * G])))[:, 0], [1 / 11, 10 / 11])
    with pytest.raises(ValueError, match="same shape"):
        viz.attention_attribution(A, G[..., :1, :1])
    with pytest.raises(ValueError, match="normalize"):
        viz.attention_attribution(A, G, normalize="rows")


def _tiny_classifier():
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForSequenceClassification

    cfg = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg, num_labels=3, seed=0, dtype=np.float64, backend="auto")


def test_model_attention_attribution_matches_the_models_gradients():
    model = _tiny_classifier()
    ids = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    backend = model.backend
    result = viz.model_attention_attribution(model, ids, attention_mask=mask, index=1, batch_index=0)
    assert model.backend is backend                               # the model itself stays on its backend
    assert result.attentions.shape == result.scores.shape == (2, 2, 5, 5)
    logits = model.forward(ids, attention_mask=mask).logits
    assert result.value == pytest.approx(float(logits[0, 1]))
    np.testing.assert_allclose(result.scores.sum(), 1.0)
    np.testing.assert_allclose(result.scores, viz.attention_attribution(result.attentions, result.gradients))
    # the helper back-propagated the one-hot of logit (0, 1): by linearity, its gradients plus those
    # of logit (0, 2) equal one backward pass from both (dy/dA itself is checked against torch
    # autograd in test_pretrained.py)
    other = viz.model_attention_attribution(model, ids, attention_mask=mask, index=2, batch_index=0)
    model = model.with_backend("numpy")
    model.forward(ids, attention_mask=mask)
    d = np.zeros((2, 3))
    d[0, 1] = d[0, 2] = 1.0
    model.backward_from(d)
    both = viz.stack_attentions(model.attention_grads())
    np.testing.assert_allclose(result.gradients + other.gradients, both, atol=1e-12)
    assert not np.allclose(result.gradients, other.gradients)
    with pytest.raises(ValueError, match="does not fit"):
        viz.model_attention_attribution(model, ids, target="nsp")


# -------------------------------------------------------------------------------- figures
def test_heatmap_has_token_labels_and_the_weights():
    atts = random_attentions()
    fig = viz.plot_attention_heatmap(atts, TOKENS, layer=1, head=2, batch_index=1)
    heat, colorbar = fig.axes                                    # the map and its colour bar
    assert [t.get_text() for t in heat.get_xticklabels()] == TOKENS
    assert [t.get_text() for t in heat.get_yticklabels()] == TOKENS
    np.testing.assert_array_equal(heat.images[0].get_array(), atts[1][1, 2])
    assert len(heat.texts) == 25 and heat.texts[0].get_text() == f"{atts[1][1, 2][0, 0]:.2f}"
    assert heat.get_title() == "layer 1, head 2"
    plt_close(fig)
    with pytest.raises(ValueError, match="head 3 does not exist"):
        viz.plot_attention_heatmap(atts, TOKENS, layer=0, head=3)


def test_model_view_has_one_axis_per_layer_and_head():
    atts = random_attentions(L=3, B=1, H=4, T=5)
    fig = viz.plot_model_view(atts, TOKENS)
    assert len(fig.axes) == 3 * 4
    left, bottom = fig.axes[4], fig.axes[2 * 4 + 1]              # layer 1 head 0; layer 2 head 1
    assert [t.get_text() for t in left.get_yticklabels()] == TOKENS
    assert [t.get_text() for t in bottom.get_xticklabels()] == TOKENS
    assert left.get_ylabel() == "layer 1" and fig.axes[3].get_title() == "head 3"
    np.testing.assert_array_equal(fig.axes[2 * 4 + 1].images[0].get_array(), atts[2][0, 1])
    plt_close(fig)
    fig = viz.plot_model_view(atts, TOKENS, layers=[0, 2], heads=[3])
    assert len(fig.axes) == 2
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), atts[2][0, 3])
    plt_close(fig)


def test_head_view_draws_one_line_per_weight_with_width_proportional_to_it():
    atts = random_attentions(L=2, B=1, H=3, T=5)
    fig = viz.plot_head_view(atts, TOKENS, layer=1, heads=[0, 2], min_weight=0.05, max_linewidth=6.0)
    ax = fig.axes[0]
    collections = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(collections) == 2
    for h, collection in zip([0, 2], collections):
        weights = atts[1][0, h]
        kept = weights[weights >= 0.05]                          # row-major, as drawn
        assert len(collection.get_segments()) == kept.size
        np.testing.assert_allclose(collection.get_linewidths(), 6.0 * kept)
    assert sorted(t.get_text() for t in ax.texts) == sorted(TOKENS * 2)
    plt_close(fig)
    fig = viz.plot_head_view(atts, TOKENS, layer=0, heads=[1], query=2, min_weight=0.0)
    segments = fig.axes[0].collections[0].get_segments()
    assert len(segments) == 5 and all(seg[0][1] == -2 for seg in segments)   # all leave token 2
    plt_close(fig)


def test_long_inputs_are_capped_with_a_clear_warning():
    T = 40
    att = np.full((1, 2, T, T), 1.0 / T)
    tokens = [f"t{i}" for i in range(T)]
    with pytest.warns(UserWarning, match="40 tokens, more than max_tokens=10"):
        fig = viz.plot_attention_heatmap(att, tokens, max_tokens=10)
    assert len(fig.axes[0].get_xticklabels()) == 10 and "first 10 tokens" in fig.axes[0].get_title()
    plt_close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # no warning without a cap
        plt_close(viz.plot_attention_heatmap(att, tokens, max_tokens=None, annotate=False))


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = viz.plot_attention_heatmap(random_attentions(), TOKENS)
    png = viz.save_figure(fig, tmp_path / "sub" / "att.png")
    svg = viz.save_figure(fig, tmp_path / "att.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text()
    with pytest.raises(ValueError, match=r"\.png, \.svg, \.pdf"):
        viz.save_figure(fig, tmp_path / "att.jpg")
    plt_close(fig)


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    fig = viz.plot_attention_heatmap(random_attentions(), TOKENS)
    target = viz.save_figure(fig, tmp_path / "att.png")
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        viz.save_figure(fig, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["att.png"]
    plt_close(fig)


def test_training_figures_are_written_as_png(tmp_path):
    history = {"loss": list(np.linspace(8.0, 4.0, 120)), "mlm_accuracy": list(np.linspace(0.0, 0.3, 120)),
               "nsp_accuracy": list(np.linspace(0.5, 0.8, 120)),
               "evals": [{"step": 60, "loss": 5.0, "mlm_accuracy": 0.2, "nsp_accuracy": 0.7}]}
    curve = viz.plot_training_curves(history, tmp_path / "curve.png")
    matrix = viz.plot_confusion_matrix(np.array([[5, 1], [2, 7]]), ["neg", "pos"], tmp_path / "cm.png", "test")
    for path in (curve, matrix):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "curve.png"]     # no temporary left
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        viz.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b", "c"], tmp_path / "bad.png")


# -------------------------------------------------------------------------------- HTML
def _embedded_data(html_text):
    match = re.search(r"var D = (\{.*?\});\n", html_text)
    assert match, "no data literal in the HTML"
    return json.loads(match.group(1))


def test_html_is_self_contained_and_holds_tokens_and_weights(tmp_path):
    atts = random_attentions(L=2, B=1, H=3, T=5)
    tokens = ["[CLS]", "<b>&", "caf\u00e9", "</script>", "[SEP]"]   # markup-looking tokens must be escaped
    path = viz.save_attention_html(tmp_path / "att.html", atts, tokens, layer=1)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://|//cdn|\bsrc\s*=|<link|@import|require\(", page), "external reference"
    assert "&lt;b&gt;&amp;" in page and "caf\u00e9" in page and "<b>&" not in page
    assert page.count("</script>") == 1                         # the token did not close the script
    data = _embedded_data(page)
    assert data["tokens"] == tokens
    weights = np.array(data["attn"])                             # (layers, heads, T, T), rounded to 4 places
    expected = viz.stack_attentions(atts)
    np.testing.assert_allclose(weights, expected, atol=5e-5)
    assert not np.allclose(weights, expected.swapaxes(-1, -2), atol=5e-5)   # a transposed copy would fail
    # the static picture (shown even without scripts) is the head view of layer 1: lines of 3 heads
    n_lines = int((expected[1] >= 0.01).sum())
    static = page[:page.index("<script>")]
    assert static.count("<line ") == n_lines


def test_model_view_html_and_notebook_repr():
    atts = random_attentions(L=2, B=1, H=3, T=5)
    view = viz.show_attention(atts, TOKENS, view="model")
    html_text = view._repr_html_()
    assert html_text == view.html and html_text.startswith("<div id=\"bfs-att-")
    assert html_text[:html_text.index("<script>")].count('class="bfs-cell"') == 2 * 3   # static grid
    other = viz.attention_html(atts, TOKENS)
    ids = {re.search(r'id="(bfs-att-[0-9a-f]+)"', h).group(1) for h in (html_text, other)}
    assert len(ids) == 2                                         # two views in one notebook do not collide
    with pytest.raises(ValueError, match="view must be"):
        viz.attention_html(atts, TOKENS, view="neuron")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (only checks the inline script)")
def test_inline_script_is_valid_javascript(tmp_path):
    page = viz.attention_html(random_attentions(), TOKENS)
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    (tmp_path / "view.js").write_text(script, encoding="utf-8")
    result = subprocess.run(["node", "--check", str(tmp_path / "view.js")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (tmp_path / "bad.js").write_text(script.replace("function render()", "function render("), encoding="utf-8")
    assert subprocess.run(["node", "--check", str(tmp_path / "bad.js")], capture_output=True).returncode != 0


# -------------------------------------------------------------------------------- CLI
def _tiny_checkpoint(folder):
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.data.tokenizer import Tokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertForPreTraining(cfg, seed=0).save_pretrained(folder)
    Tokenizer(vocab).save_vocab(folder)
    return folder


def _run_cli(argv):
    from bert_from_scratch.cli.attention import add_attention_arguments, cli_attention
    parser = add_attention_arguments(argparse.ArgumentParser())
    return cli_attention(parser.parse_args(argv))


def test_cli_draws_our_own_checkpoint(tmp_path, capsys):
    folder = _tiny_checkpoint(tmp_path / "ckpt")
    png, page = tmp_path / "att.png", tmp_path / "att.html"
    assert _run_cli(["The cat sat on the mat.", "--model", str(folder), "--layer", "1",
                     "--out", str(png), "--html", str(page)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert _embedded_data(page.read_text())["tokens"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".",
                                                          "[SEP]"]
    capsys.readouterr()
    assert _run_cli(["The cat sat.", "--model", str(folder), "--layer", "5", "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "bert-from-scratch: error: layer 5 does not exist: there are 2 layers (0..1)"
    assert _run_cli(["The cat sat.", "--model", str(tmp_path / "nowhere"), "--out", str(png)]) == 2
    assert _run_cli(["The cat sat.", "--model", str(folder), "--out", str(tmp_path / "a.gif")]) == 2
    assert _run_cli(["The cat sat.", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 3 and all(line.startswith("bert-from-scratch: error: ") for line in err.strip().splitlines())


def test_model_attribution_of_a_hidden_state_direction():
    from bert_from_scratch.model import BertModel

    model = BertModel(_tiny_classifier().config, seed=1, dtype=np.float64)
    ids = np.array([[2, 5, 6, 3, 0], [2, 8, 9, 7, 3]])
    mask = (ids != 0).astype(np.int64)
    u = np.random.default_rng(0).normal(size=16)
    result = viz.model_attention_attribution(model, ids, attention_mask=mask, direction=u)   # "auto" -> "hidden"
    hidden = model.forward(ids, attention_mask=mask).last_hidden_state               # (2, 5, 16)
    assert result.value == pytest.approx(float((hidden[0, :4] @ u).sum()))            # padding excluded
    assert result.target == "direction . last hidden state"
    # gradient check by linearity against a direct backward from the same (T, H) upstream gradient
    model = model.with_backend("numpy")
    model.forward(ids, attention_mask=mask)
    d = np.zeros((2, 5, 16))
    d[0, :4] = u
    model.backward(d_last_hidden_state=d)
    np.testing.assert_allclose(result.gradients, viz.stack_attentions(model.attention_grads()), atol=1e-12)
    with pytest.raises(ValueError, match="direction must have shape"):
        viz.model_attention_attribution(model, ids, direction=np.ones(3))
    with pytest.raises(ValueError, match="needs direction"):
        viz.model_attention_attribution(model, ids)
