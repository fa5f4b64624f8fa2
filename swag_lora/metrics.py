"""Metrics: pure numpy functions of predicted probabilities and labels (nothing here knows of models).

Conventions (docs/outputs.md has the definitions):
* `probs` is N x C (rows sum to 1): the Bayesian model average, i.e. the mean of the members' probabilities.
* `member_probs` is S x N x C: one slice per weight draw (dropout pass, SWAG sample, ensemble member).
* The prediction is argmax of the averaged probabilities (never of averaged logits).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12
DEFAULT_ECE_BINS = 15
OOD_SCORES = ("max_prob", "entropy", "mutual_information")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true label (natural log)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of sum_c (p_c - 1[c = y])^2 (0 best, 2 worst)."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """Per-bin accuracy, mean confidence and count over equal-width confidence bins (b/n, (b+1)/n]."""
    conf = probs.max(axis=1)
    correct = np.argmax(probs, axis=1) == labels
    # conf == 0 cannot happen for a distribution over C >= 1 classes
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / np.maximum(count, 1)
    return {"edges": np.linspace(0, 1, n_bins + 1), "accuracy": acc, "confidence": mean_conf, "count": count}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins (b/n, (b+1)/n]."""
    b = reliability_bins(probs, labels, n_bins)
    return float(np.sum(b["count"] / len(labels) * np.abs(b["accuracy"] - b["confidence"])))


def matthews_corrcoef(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K) of the argmax predictions; 0 when undefined."""
    pred = np.argmax(probs, axis=1)
    k = max(probs.shape[1], int(labels.max()) + 1)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (labels, pred), 1)
    t, p = cm.sum(1), cm.sum(0)
    c, s = np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-example entropy of a distribution (nats)."""
    return -np.sum(probs * np.log(np.clip(probs, EPS, None)), axis=-1)


def mutual_information(member_probs: np.ndarray) -> np.ndarray:
    """Per-example epistemic uncertainty H[mean_s p_s] - mean_s H[p_s] (0 for a single member)."""
    return np.clip(entropy(member_probs.mean(0)) - entropy(member_probs).mean(0), 0.0, None)


def disagreement(member_probs: np.ndarray) -> np.ndarray:
    """Per-example fraction of members whose argmax differs from the averaged prediction."""
    bma_pred = np.argmax(member_probs.mean(0), axis=-1)
    return np.mean(np.argmax(member_probs, axis=-1) != bma_pred[None], axis=0)


def ood_scores(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example scores where HIGHER means MORE likely out-of-distribution."""
    probs = member_probs.mean(0)
    return {"max_prob": -probs.max(axis=1), "entropy": entropy(probs),
            "mutual_information": mutual_information(member_probs)}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (sum over thresholds of dR * P)."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    tp = np.cumsum(y)
    # one threshold per distinct score: take the last index of each tie group
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, n = tp[last], last + 1
    precision, recall = tp / n, tp / max(y.sum(), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(member_probs: np.ndarray, labels: np.ndarray, with_mcc: bool = False) -> dict[str, float]:
    """All scalar metrics of one evaluation from the S x N x C member probabilities."""
    member_probs = np.asarray(member_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    probs = member_probs.mean(0)
    out = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": expected_calibration_error(probs, labels, DEFAULT_ECE_BINS),
        "ece_10": expected_calibration_error(probs, labels, 10),
        "ece_20": expected_calibration_error(probs, labels, 20),
        "entropy": float(entropy(probs).mean()),
        "mutual_information": float(mutual_information(member_probs).mean()),
        "disagreement": float(disagreement(member_probs).mean()),
    }
    if with_mcc:
        out["mcc"] = matthews_corrcoef(probs, labels)
    return out


def ood_detection_metrics(id_member_probs: np.ndarray, ood_member_probs: np.ndarray) -> dict[str, float]:
    """AUROC (OOD positive), AUPR-in (ID positive, scored by -score) and AUPR-out (OOD positive) per score."""
    id_s, ood_s = ood_scores(np.asarray(id_member_probs, float)), ood_scores(np.asarray(ood_member_probs, float))
    is_ood = np.r_[np.zeros(id_member_probs.shape[1], bool), np.ones(ood_member_probs.shape[1], bool)]
    out = {}
    for name in OOD_SCORES:
        s = np.r_[id_s[name], ood_s[name]]
        out[f"auroc_{name}"] = auroc(s, is_ood)
        out[f"aupr_in_{name}"] = average_precision(-s, ~is_ood)
        out[f"aupr_out_{name}"] = average_precision(s, is_ood)
    return out
