"""A statistical check of pretraining instances against google-research/bert's recipe.

``check_instances`` verifies every instance that ``pretraining.create_pretraining_instances``
made, exactly where it can (layout, segment ids, where ``A`` and ``B`` come from, which
positions are masked) and statistically where the recipe is random (the 80/10/10 split of
masked tokens, the share of random next segments). The tests use it, and show there that it
rejects broken recipes; chapter 8 runs it on the instances it builds.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .pretraining import Instance



def instance_statistics(instances: Sequence[Instance]) -> dict[str, float]:
    """Counts and rates: tokens, predictions, the [MASK]/random/kept split, the NSP balance."""
    n_tokens = sum(len(x.tokens) for x in instances)
    n_pred = n_mask = n_keep = 0
    for x in instances:
        for pos, label in zip(x.masked_lm_positions, x.masked_lm_labels):
            n_pred += 1
            if x.tokens[pos] == "[MASK]":
                n_mask += 1
            elif x.tokens[pos] == label:
                n_keep += 1
    n_random_next = sum(x.is_random_next for x in instances)
    return {
        "instances": len(instances), "tokens": n_tokens, "predictions": n_pred,
        "masked_rate": n_pred / max(n_tokens, 1),
        "frac_mask": n_mask / max(n_pred, 1), "frac_keep": n_keep / max(n_pred, 1),
        "frac_random": (n_pred - n_mask - n_keep) / max(n_pred, 1),
        "frac_random_next": n_random_next / max(len(instances), 1),
        "mean_length": n_tokens / max(len(instances), 1),
    }


def _within(observed: float, expected: float, n: int, z: float) -> bool:
    """|observed - expected| within z binomial standard errors (plus 0.002 for rounding)."""
    return abs(observed - expected) <= z * math.sqrt(expected * (1 - expected) / max(n, 1)) + 0.002


def check_instances(instances: Sequence[Instance], documents: list[list[list[str]]], max_seq_length: int,
                    masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20,
                    whole_word_mask: bool = False, nsp_random_range: tuple[float, float] = (0.45, 0.65),
                    z: float = 5.0) -> list[str]:
    """Check instances against the recipe; return the list of failures (empty = all good).

    Exact checks, per instance: ``[CLS] A [SEP] B [SEP]`` layout and segment ids, length
    ``<= max_seq_length``, non-empty A and B, positions increasing and never on ``[CLS]``/
    ``[SEP]``, the number of predictions (= ``min(P, max(1, round(len·p)))``; with whole-word
    masking at most that, and every masked word masked whole); ``A`` and ``B`` (unmasked) are
    contiguous runs of their documents; IsNext ⇔ ``B`` from A's document, after ``A``; a random
    ``B`` from another document; no random replacement is a bracketed token.
    Statistical checks, over all predictions, within ``z`` standard errors: 80% ``[MASK]``,
    10% random, 10% kept; the fraction of random next segments in ``nsp_random_range`` (above
    1/2: a one-sentence chunk always gets a random B).
    """
    failures: list[str] = []
    n_instance_failures = 0

    def fail(msg: str) -> None:                 # per-instance problems: keep the first 20
        nonlocal n_instance_failures
        n_instance_failures += 1
        if n_instance_failures <= 20:
            failures.append(msg)

    streams = ["\x00" + "\x00".join(t for s in doc for t in s) + "\x00" for doc in documents]

    def locate(doc: int, segment: list[str]) -> int:
        return streams[doc].find("\x00" + "\x00".join(segment) + "\x00")

    n_expected_total = 0
    for n, x in enumerate(instances):
        L = len(x.tokens)
        if L > max_seq_length:
            fail(f"instance {n}: {L} tokens > max_seq_length={max_seq_length}")
        positions = x.masked_lm_positions
        if (positions != sorted(set(positions)) or len(positions) != len(x.masked_lm_labels)
                or (positions and not 0 <= positions[0] <= positions[-1] < L)):
            fail(f"instance {n}: masked positions not increasing, unique and inside the sequence")
            continue
        original = list(x.tokens)                           # the instance before masking
        for pos, label in zip(positions, x.masked_lm_labels):
            original[pos] = label
        seps = [i for i, s in enumerate(x.segment_ids) if i > 0 and s != x.segment_ids[i - 1]]
        if (len(x.segment_ids) != L or original[0] != "[CLS]" or original[-1] != "[SEP]" or len(seps) != 1
                or x.segment_ids[0] != 0 or x.segment_ids[-1] != 1 or original[seps[0] - 1] != "[SEP]"):
            fail(f"instance {n}: not laid out as [CLS] A [SEP] B [SEP] with segment ids 0…0 1…1")
            continue
        a_end = seps[0] - 1                                 # index of the first [SEP]
        if a_end < 2 or L - a_end < 3:
            fail(f"instance {n}: an empty segment")
        special_positions = {0, a_end, L - 1}
        if special_positions & set(positions) or any(t in ("[CLS]", "[SEP]") for t in x.masked_lm_labels):
            fail(f"instance {n}: a [CLS]/[SEP] token is masked")
            continue
        expected = min(max_predictions_per_seq, max(1, int(round(L * masked_lm_prob))))
        n_expected_total += expected
        if (len(positions) != expected) if not whole_word_mask else (len(positions) > expected):
            fail(f"instance {n}: {len(positions)} predictions, the recipe gives {expected}")
        for pos, label in zip(positions, x.masked_lm_labels):
            token = x.tokens[pos]
            if token not in ("[MASK]", label) and token.startswith("[") and token.endswith("]"):
                fail(f"instance {n}: random replacement {token!r} is a special token")
        if whole_word_mask:
            masked = set(positions)
            for i in range(1, L):
                if original[i].startswith("##") and i - 1 not in special_positions and (
                        (i in masked) != (i - 1 in masked)):
                    fail(f"instance {n}: word pieces {original[i - 1]!r} {original[i]!r} of one word "
                         f"masked apart (whole-word masking)")
                    break
        seg_a, seg_b = original[1:a_end], original[a_end + 1:L - 1]
        if x.is_random_next != (x.doc_index_a != x.doc_index_b):
            fail(f"instance {n}: is_random_next={x.is_random_next} but A from document {x.doc_index_a}, "
                 f"B from document {x.doc_index_b}")
        at_a, at_b = locate(x.doc_index_a, seg_a), locate(x.doc_index_b, seg_b)
        if at_a < 0:
            fail(f"instance {n}: segment A is not a contiguous run of document {x.doc_index_a}")
        if at_b < 0:
            fail(f"instance {n}: segment B is not a contiguous run of document {x.doc_index_b}")
        if not x.is_random_next and at_a >= 0 and at_b >= 0:
            a_string = "\x00" + "\x00".join(seg_a) + "\x00"
            b_string = "\x00" + "\x00".join(seg_b) + "\x00"
            if streams[x.doc_index_a].find(b_string, at_a + len(a_string) - 1) < 0:
                fail(f"instance {n}: IsNext but B does not come after A in the document")

    if n_instance_failures > 20:
        failures.append(f"... and {n_instance_failures - 20} more per-instance failures")
    stats = instance_statistics(instances)
    n_pred = int(stats["predictions"])
    fail = failures.append                  # aggregate problems: always reported
    if whole_word_mask and n_pred < 0.9 * n_expected_total:
        fail(f"whole-word masking predicted {n_pred} tokens, under 90% of the {n_expected_total} expected")
    for key, expected in (("frac_mask", 0.8), ("frac_random", 0.1), ("frac_keep", 0.1)):
        if not _within(stats[key], expected, n_pred, z):
            fail(f"{key} = {stats[key]:.4f} over {n_pred} predictions, expected {expected} "
                 f"(80% [MASK] / 10% random / 10% kept)")
    lo, hi = nsp_random_range
    if not lo <= stats["frac_random_next"] <= hi:
        fail(f"fraction of random next segments {stats['frac_random_next']:.3f} outside [{lo}, {hi}]")
    return failures
