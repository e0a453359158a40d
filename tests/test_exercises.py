"""The exercise graders are honest: the reference solutions pass, the untouched stubs fail, and a
planted wrong answer for every part fails with a message that points at the mistake.

Each test carries the marker of its chapter (``pytest -m ch03``).
"""
from __future__ import annotations

import math
import random
import types

import numpy as np
import pytest
from scipy.special import erf

from bert_from_scratch.constants import IGNORE_INDEX
from bert_from_scratch.exercises import grader, solutions
from bert_from_scratch.cli.check import add_check_arguments, cli_check
from bert_from_scratch.exercises.grader import ExerciseError, chapters, exercise_file, grade

S = solutions
CHAPTER_NUMBERS = sorted(chapters())


def chapter_param(n, *values):
    return pytest.param(n, *values, marks=getattr(pytest.mark, f"ch{n:02d}"), id=f"ch{n:02d}")


def with_functions(**replacements):
    """A module: the reference solutions with some functions replaced by wrong ones."""
    module = types.ModuleType("planted")
    module.__dict__.update({k: v for k, v in vars(solutions).items() if not k.startswith("__")})
    module.__dict__.update(replacements)
    module.__file__ = "planted.py"
    return module


# =======================================================================================
# planted wrong answers, one or more per part: (chapter, part, replacements, expected text)
# =======================================================================================
def _no_accent_strip(text):
    words = []
    for chunk in text.lower().split():
        cur = ""
        for ch in chunk:
            if not ch.isalnum():
                words += [cur] if cur else []
                words.append(ch)
                cur = ""
            else:
                cur += ch
        words += [cur] if cur else []
    return words


def _shortest_first(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def _partial_unk(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
            end -= 1
        if end == start:
            pieces.append("[UNK]")
            break
        pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
        start = end
    return pieces


def _embeddings_no_pos(ids, types_, W, P, K):
    return W[ids] + K[types_]


def _embeddings_backward_buffered(dx, ids, types_, ws, ps, ts):
    dword, dpos, dtype_ = np.zeros(ws), np.zeros(ps), np.zeros(ts)
    dword[ids] += dx                                  # repeated ids: only one write survives
    dtype_[types_] += dx
    dpos[: dx.shape[1]] = dx.sum(0)
    return dword, dpos, dtype_


def _attention_unscaled(q, k, v, mask=None):
    return S.attention_forward(q * math.sqrt(q.shape[-1]), k, v, mask)


def _attention_backward_no_rowsum(dout, cache):
    q, k, v, probs = cache
    d = q.shape[-1]
    dprobs = dout @ v.swapaxes(-1, -2)
    dscores = probs * dprobs                          # the - rowsum(dP * P) term is missing
    return (dscores @ k / math.sqrt(d), dscores.swapaxes(-1, -2) @ q / math.sqrt(d),
            probs.swapaxes(-1, -2) @ dout)


def _layernorm_unbiased(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / x.std(-1, ddof=1, keepdims=True)
    xhat = (x - mean) * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def _layernorm_backward_one_term(dy, cache):
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dxhat = dy * gamma
    return (rstd * (dxhat - dxhat.mean(-1, keepdims=True)), (dy * xhat).reshape(-1, C).sum(0),
            dy.reshape(-1, C).sum(0))


def _gelu_tanh(x):
    y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return y, (x, 0.5 * (1 + erf(x / math.sqrt(2))))


def _gelu_backward_cdf_only(dy, cache):
    return dy * cache[1]


def _ffn_no_residual(x, w1, b1, w2, b2, gamma, beta, eps=1e-12):
    g, _ = S.gelu_forward(x @ w1.T + b1)
    return S.layernorm_forward(g @ w2.T + b2, gamma, beta, eps)


def _ffn_backward_no_residual(dy, cache):
    grads = S.ffn_block_backward(dy, cache)
    dsum, _, _ = S.layernorm_backward(dy, cache[-1])
    grads["dx"] = grads["dx"] - dsum                  # only the path through the block
    return grads


def _gather_column_major(seq, labels):
    t, b = np.nonzero((labels != IGNORE_INDEX).T)
    return seq[b, t], labels[b, t]


def _ce_mean_all_rows(logits, labels):
    loss, cache = S.cross_entropy_forward(logits, labels)
    return loss * cache[3] / len(labels), cache


def _ce_backward_all_rows(cache):
    log_probs, safe, valid, n_valid = cache
    return S.cross_entropy_backward(cache) * n_valid / len(safe)


def _mask_always_mask(tokens, rng, vocab_words, p=0.15, n_max=20):
    out, pos, labels = S.mask_tokens(tokens, rng, vocab_words, p, n_max)
    return [("[MASK]" if i in set(pos) else t) for i, t in enumerate(out)], pos, labels


def _mask_includes_specials(tokens, rng, vocab_words, p=0.15, n_max=20):
    candidates = list(range(len(tokens)))             # [CLS] and [SEP] are candidates too
    rng.shuffle(candidates)
    n = min(n_max, max(1, int(round(len(tokens) * p))))
    chosen = sorted(candidates[:n])
    out = list(tokens)
    for i in chosen:
        out[i] = "[MASK]"
    return out, chosen, [tokens[i] for i in chosen]


def _mask_global_random(tokens, rng, vocab_words, p=0.15, n_max=20):
    return S.mask_tokens(tokens, random.Random(random.random()), vocab_words, p, n_max)


def _mask_first_n(tokens, rng, vocab_words, p=0.15, n_max=20):
    class NoShuffle(random.Random):
        def shuffle(self, x):
            pass
    inner = NoShuffle(rng.random())
    return S.mask_tokens(tokens, inner, vocab_words, p, n_max)


def _adamw_l2(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    S.adamw_step(param, grad + weight_decay * param, m, v, step, lr, beta1, beta2, eps, 0.0)


def _adamw_no_bias_correction(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    param -= lr * m / (np.sqrt(v) + eps)


def _adamw_rebinds(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    param = param - lr * grad                         # rebinds a local name: the caller sees nothing  # noqa: F841


def _lr_one_based(step, total, warmup, peak):
    return S.warmup_linear_lr(step + 1, total, warmup, peak)


def _clip_per_tensor(grads, max_norm):
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    for g in grads.values():
        g *= min(1.0, max_norm / (np.linalg.norm(g) + 1e-6))
    return norm


def _online_no_correction(m, l, o, scores, v_tile):
    m_new = np.maximum(m, scores.max(axis=1))
    p = np.exp(scores - m_new[:, None])
    return m_new, l + p.sum(axis=1), o + p @ v_tile


def _tiled_unscaled(q, k, v, block_k=16):
    return S.tiled_attention(q * math.sqrt(q.shape[1]), k, v, block_k)


def _entropy_log2(att):
    return S.attention_entropy(att) / math.log(2)


def _rollout_reversed(att, residual_weight=0.5):
    L, _, T, _ = att.shape
    mixed = (1 - residual_weight) * att.mean(1) + residual_weight * np.eye(T)
    mixed /= mixed.sum(-1, keepdims=True)
    out = np.empty_like(mixed)
    out[0] = mixed[0]
    for i in range(1, L):
        out[i] = out[i - 1] @ mixed[i]
    return out


def _classifier_no_bias(pooled, weight, bias, labels):
    return S.classifier_forward(pooled, weight, np.zeros_like(bias), labels)


def _classifier_backward_no_mean(cache):
    dpooled, dweight, dbias = S.classifier_backward(cache)
    return dpooled, dweight * len(cache[3]), dbias


def _macro_f1_accuracy(predictions, labels, num_labels):
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


PLANTED = [
    (1, "basic_tokenize", {"basic_tokenize": _no_accent_strip}, "strip accents"),
    (1, "wordpiece", {"wordpiece": _shortest_first}, "LONGEST"),
    (1, "wordpiece", {"wordpiece": _partial_unk}, "WHOLE word"),
    (2, "embeddings_forward", {"embeddings_forward": _embeddings_no_pos}, "position embeddings are missing"),
    (2, "embeddings_backward", {"embeddings_backward": _embeddings_backward_buffered}, "np.add.at"),
    (3, "attention_forward", {"attention_forward": _attention_unscaled}, "not divided by sqrt(d)"),
    (3, "attention_backward", {"attention_backward": _attention_backward_no_rowsum}, "rowsum(dP * P)"),
    (4, "split_heads", {"split_heads": lambda x, nh: x.reshape(x.shape[0], nh, x.shape[1], -1)},
     "plain reshape"),
    (4, "merge_heads", {"merge_heads": lambda x: x.reshape(x.shape[0], x.shape[2], -1)}, "transpose"),
    (4, "attention_mask_bias",
     {"attention_mask_bias": lambda mask, dtype=np.float32: (mask.astype(dtype) * dtype(-10000.0))[:, None, None, :]},
     "-10000 goes where the mask is 0"),
    (5, "layernorm_forward", {"layernorm_forward": _layernorm_unbiased}, "unbiased"),
    (5, "layernorm_backward", {"layernorm_backward": _layernorm_backward_one_term}, "both mean terms"),
    (5, "gelu_forward", {"gelu_forward": _gelu_tanh}, "tanh approximation"),
    (5, "gelu_backward", {"gelu_backward": _gelu_backward_cdf_only}, "Phi(x) + x phi(x)"),
    (6, "ffn_block_forward", {"ffn_block_forward": _ffn_no_residual}, "residual is missing"),
    (6, "ffn_block_backward", {"ffn_block_backward": _ffn_backward_no_residual}, "dx = dsum +"),
    (7, "gather_masked", {"gather_masked": _gather_column_major}, "gather_masked rows is wrong"),
    (7, "cross_entropy_forward", {"cross_entropy_forward": _ce_mean_all_rows}, "over ALL rows"),
    (7, "cross_entropy_backward", {"cross_entropy_backward": _ce_backward_all_rows}, "counted rows"),
    (8, "mask_tokens", {"mask_tokens": _mask_always_mask}, "80% [MASK]"),
    (8, "mask_tokens", {"mask_tokens": _mask_includes_specials}, "are never masked"),
    (8, "mask_tokens", {"mask_tokens": _mask_global_random}, "draw all randomness"),
    (8, "mask_tokens", {"mask_tokens": _mask_first_n}, "uniformly at random"),
    (9, "adamw_step", {"adamw_step": _adamw_l2}, "L2 regularisation"),
    (9, "adamw_step", {"adamw_step": _adamw_no_bias_correction}, "no bias correction"),
    (9, "adamw_step", {"adamw_step": _adamw_rebinds}, "IN PLACE"),
    (9, "warmup_linear_lr", {"warmup_linear_lr": _lr_one_based}, "step counts from 0"),
    (9, "clip_by_global_norm", {"clip_by_global_norm": _clip_per_tensor}, "clipped by its own norm"),
    (10, "online_softmax_update", {"online_softmax_update": _online_no_correction}, "correction is missing"),
    (10, "tiled_attention", {"tiled_attention": _tiled_unscaled}, "not divided by sqrt(d)"),
    (11, "attention_entropy", {"attention_entropy": _entropy_log2}, "log base 2"),
    (11, "attention_rollout", {"attention_rollout": _rollout_reversed}, "wrong order"),
    (12, "classifier_forward", {"classifier_forward": _classifier_no_bias}, "the bias is missing"),
    (12, "classifier_backward", {"classifier_backward": _classifier_backward_no_mean}, "dlogits = (softmax - onehot) / B"),
    (12, "macro_f1", {"macro_f1": _macro_f1_accuracy}, "accuracy (micro-F1)"),
]


# =======================================================================================
# the three honesty properties
# =======================================================================================
@pytest.mark.parametrize("chapter", [chapter_param(n) for n in CHAPTER_NUMBERS])
def test_reference_solutions_pass(chapter, capsys):
    report = grade(chapter, module=solutions)
    assert report.ok, str(report)
    assert report.exit_code == 0
    printed = capsys.readouterr().out
    assert printed.count("PASS") == len(chapters()[chapter].parts) and "FAIL" not in printed


@pytest.mark.parametrize("chapter", [chapter_param(n) for n in CHAPTER_NUMBERS])
def test_untouched_stubs_fail_every_part(chapter):
    path = exercise_file(chapter)
    assert path.is_file(), path
    report = grade(chapter, file=path, verbose=False)
    assert not report.ok and report.exit_code == 1
    assert [r.part for r in report.results] == [p.name for p in chapters()[chapter].parts]
    for r in report.results:
        assert r.status == "TODO" and "not implemented" in r.message, r


def test_every_part_has_a_planted_wrong_answer():
    covered = {(c, p) for c, p, _, _ in PLANTED}
    every = {(n, part.name) for n, ch in chapters().items() for part in ch.parts}
    assert every - covered == set()


@pytest.mark.parametrize("chapter, part, replacements, expected",
                         [chapter_param(c, p, r, e) for c, p, r, e in PLANTED])
def test_planted_wrong_answer_fails_with_a_helpful_message(chapter, part, replacements, expected):
    report = grade(chapter, module=with_functions(**replacements), verbose=False)
    result = report.result(part)
    assert not result.ok and result.status == "FAIL", result
    assert expected in result.message, result.message
    assert report.exit_code == 1
    # parts that do not use the planted function still pass: the message points at the right part
    untouched = [p.name for p in chapters()[chapter].parts if not set(p.functions) & set(replacements)]
    for name in untouched:
        assert report.result(name).ok, report.result(name)


# =======================================================================================
# what a learner meets: crashes, missing functions, files, the command line
# =======================================================================================
@pytest.mark.ch03
def test_crash_in_learner_code_names_the_line(tmp_path):
    path = tmp_path / "ch03_attention.py"
    path.write_text("import numpy as np\n\ndef attention_forward(q, k, v, mask=None):\n"
                    "    return np.matmul(q, k), None\n\ndef attention_backward(dout, cache):\n"
                    "    raise NotImplementedError\n")
    report = grade(3, file=path, verbose=False)
    first = report.result("attention_forward")
    assert not first.ok and "raised ValueError" in first.message and "line 4" in first.message, first.message
    assert report.result("attention_backward").status == "FAIL"


@pytest.mark.ch03
def test_missing_function_and_wrong_return(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def attention_forward(q, k, v, mask=None):\n    return q\n")
    report = grade(3, file=path, verbose=False)
    assert "must return a pair" in report.result("attention_forward").message
    assert "no function `attention_backward`" in report.result("attention_backward").message


def test_file_that_does_not_import_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n")
    with pytest.raises(ExerciseError, match="importing .*broken.py failed: SyntaxError"):
        grade(1, file=path, verbose=False)
    with pytest.raises(ExerciseError, match="does not exist"):
        grade(1, file=tmp_path / "nope.py", verbose=False)
    with pytest.raises(ExerciseError, match="no chapter 13"):
        grade(13, module=solutions, verbose=False)
    with pytest.raises(ExerciseError, match="chapter must be a number"):
        grade("three", module=solutions, verbose=False)


def test_env_var_points_at_another_exercises_folder(tmp_path, monkeypatch):
    (tmp_path / "ch12_finetuning.py").write_text(
        "from bert_from_scratch.exercises.solutions import classifier_forward, classifier_backward, macro_f1\n")
    monkeypatch.setenv(grader.ENV_FOLDER, str(tmp_path))
    assert exercise_file(12) == tmp_path / "ch12_finetuning.py"
    assert grade(12, verbose=False).ok
    monkeypatch.setenv(grader.ENV_FOLDER, str(tmp_path / "missing"))
    with pytest.raises(ExerciseError, match="not a folder"):
        exercise_file(12)


def _cli(argv):
    import argparse

    return cli_check(add_check_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_cli_exit_codes(tmp_path, capsys):
    assert _cli(["5", "--solutions"]) == 0
    assert "4/4 parts pass" in capsys.readouterr().out
    assert _cli(["5"]) == 1                                 # the untouched stub
    out = capsys.readouterr().out
    assert "FAIL  layernorm_backward" in out and "0/4 parts pass" in out
    mine = tmp_path / "mine.py"
    mine.write_text("from bert_from_scratch.exercises.solutions import *\n")
    assert _cli(["5", "--file", str(mine)]) == 0
    capsys.readouterr()
    assert _cli(["all", "--solutions", "--quiet"]) == 0
    assert capsys.readouterr().out.count("parts pass") == len(CHAPTER_NUMBERS)
    assert _cli(["99"]) == 2
    assert "no chapter 99" in capsys.readouterr().err


def test_module_entry_point_runs(monkeypatch, capsys):
    from bert_from_scratch.exercises.__main__ import main

    assert main(["check", "10", "--solutions"]) == 0
    assert "2/2 parts pass" in capsys.readouterr().out


@pytest.mark.ch08
def test_masking_grader_is_not_fooled_by_the_package_recipe():
    """The package's own create_masked_lm_predictions (a second implementation) passes the chapter-8 grader."""
    from bert_from_scratch.data.pretraining import create_masked_lm_predictions

    def mask_tokens(tokens, rng, vocab_words, masked_lm_prob=0.15, max_predictions=20):
        return create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions, vocab_words, rng)

    report = grade(8, module=with_functions(mask_tokens=mask_tokens), verbose=False)
    assert report.ok, str(report)
