"""Each metric against scikit-learn or a hand computation; guards against the original's bugs."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.metrics import matthews_corrcoef as sk_mcc

from swag_lora import metrics as M


def random_probs(n, c, seed=0, s=None):
    rng = np.random.default_rng(seed)
    shape = (n, c) if s is None else (s, n, c)
    x = rng.normal(size=shape) * 2
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), rng.integers(0, c, size=n)


def test_accuracy_nll_brier_against_sklearn():
    p, y = random_probs(200, 4)
    assert M.accuracy(p, y) == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert M.nll(p, y) == pytest.approx(log_loss(y, p, labels=range(4)))
    # binary: sklearn's brier is the mean of (p1 - y)^2; the multi-class sum is twice that
    pb, yb = random_probs(200, 2, seed=1)
    assert M.brier(pb, yb) == pytest.approx(2 * brier_score_loss(yb, pb[:, 1]))


def test_ece_by_hand():
    p = np.array([[0.95, 0.05], [0.65, 0.35], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    y = np.array([0, 1, 0, 1, 1])
    # 10 bins: 0.95 -> (0.9,1.0] correct; 0.65,0.6 -> (0.6,0.7] and (0.5,0.6]; 0.8 -> (0.7,0.8]; 0.5 -> (0.4,0.5]
    expected = (abs(1 - 0.95) + abs(0 - 0.65) + abs(1 - 0.6) + abs(1 - 0.8) + abs(0 - 0.5)) / 5
    assert M.expected_calibration_error(p, y, 10) == pytest.approx(expected)
    # 2 bins: (0,0.5] holds 0.5 (wrong); (0.5,1] holds the rest: acc 3/4, conf mean .75
    expected2 = 1 / 5 * 0.5 + 4 / 5 * abs(3 / 4 - np.mean([0.95, 0.65, 0.6, 0.8]))
    assert M.expected_calibration_error(p, y, 2) == pytest.approx(expected2)


def test_ece_equals_torchmetrics_the_peers_metric():
    """BayesAdapt and bayesian-peft report torchmetrics' MulticlassCalibrationError (15 bins, l1)."""
    import torch
    from torchmetrics.classification import MulticlassCalibrationError
    for seed, c in ((0, 4), (1, 2), (2, 5)):
        p, y = random_probs(700, c, seed=seed)
        tm = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")(torch.tensor(p), torch.tensor(y))
        assert M.expected_calibration_error(p, y, 15) == pytest.approx(float(tm), rel=1e-6)   # torchmetrics: float32
    # confidence exactly 1.0: torchmetrics (issue #3510) puts such rows in a bin of their own beyond the last
    # edge; here they stay in the top bin (14/15, 1], as in Guo et al. and the original -- the one difference
    y = np.arange(100) % 3
    p = np.zeros((100, 3))
    p[:40] = np.eye(3)[y[:40]]                               # confidence 1.0, right
    p[40:50] = np.eye(3)[(y[40:50] + 1) % 3]                 # confidence 1.0, wrong
    p[50:70] = 0.94 * np.eye(3)[y[50:70]] + 0.02             # the same top bin, 0.96, right (under-confident)
    p[70:] = [0.5, 0.3, 0.2]                                 # 0.5, a third right
    conf, correct = p.max(1), p.argmax(1) == y
    top = conf > 14 / 15
    def ece_by_hand(groups):
        return sum(g.sum() / len(y) * abs(correct[g].mean() - conf[g].mean()) for g in groups if g.any())
    lower = [(conf > b / 15) & (conf <= (b + 1) / 15) for b in range(14)]
    assert M.expected_calibration_error(p, y, 15) == pytest.approx(ece_by_hand(lower + [top]))
    tm = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")(torch.tensor(p), torch.tensor(y))
    assert float(tm) == pytest.approx(ece_by_hand(lower + [top & (conf < 1), conf == 1]), rel=1e-6)
    assert float(tm) != pytest.approx(M.expected_calibration_error(p, y, 15))


def test_ece_bin_counts_differ_and_perfect_calibration_is_zero():
    p, y = random_probs(500, 3, seed=3)
    assert M.expected_calibration_error(p, y, 10) != M.expected_calibration_error(p, y, 20)
    onehot = np.eye(3)[y]
    assert M.expected_calibration_error(onehot, y) == 0.0


def test_mcc_against_sklearn():
    for c, seed in [(2, 0), (3, 1)]:
        p, y = random_probs(300, c, seed=seed)
        assert M.matthews_corrcoef(p, y) == pytest.approx(sk_mcc(y, p.argmax(1)))
    p = np.tile([0.9, 0.1], (10, 1))
    assert M.matthews_corrcoef(p, np.array([0, 1] * 5)) == 0.0


def test_entropy_mi_disagreement_by_hand():
    members = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident members that disagree
    assert M.mutual_information(members)[0] == pytest.approx(np.log(2))
    assert M.entropy(members.mean(0))[0] == pytest.approx(np.log(2))
    assert M.disagreement(np.array([[[0.9, 0.1]], [[0.8, 0.2]], [[0.1, 0.9]]]))[0] == pytest.approx(1 / 3)
    same = np.repeat(random_probs(10, 3)[0][None], 4, axis=0)
    np.testing.assert_allclose(M.mutual_information(same), 0, atol=1e-12)


def test_ensemble_mutual_information_is_not_zero():
    """The original computed the MI of an ensemble from its averaged probabilities only: always 0."""
    members, y = random_probs(50, 4, s=5)
    metrics = M.classification_metrics(members, y)
    assert metrics["mutual_information"] > 0.05
    p = members.mean(0)
    expected = np.mean(-np.sum(p * np.log(p), 1) - np.mean(-np.sum(members * np.log(members), 2), 0))
    assert metrics["mutual_information"] == pytest.approx(expected)


def test_accuracy_from_averaged_probabilities_not_logits():
    # member logits chosen so that the mean of logits and the mean of probabilities disagree
    logits = np.array([[[0.0, 10.0]], [[2.0, 0.0]], [[2.0, 0.0]]])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert logits.mean(0).argmax(-1)[0] == 1          # averaged logits say class 1
    assert M.classification_metrics(probs, np.array([0]))["accuracy"] == 1.0   # BMA says class 0


def test_auroc_aupr_against_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)   # many ties
    pos = rng.random(300) < 0.3
    assert M.auroc(scores, pos) == pytest.approx(roc_auc_score(pos, scores))
    assert M.average_precision(scores, pos) == pytest.approx(average_precision_score(pos, scores))


def test_ood_detection_directions():
    """Confident ID and uncertain OOD give AUROC ~1 for every score, and both AUPRs ~1."""
    rng = np.random.default_rng(1)
    id_members = np.tile(np.array([0.97, 0.01, 0.01, 0.01]), (4, 100, 1))
    ood = rng.dirichlet(np.ones(4), size=(4, 100))
    out = M.ood_detection_metrics(id_members, ood)
    for s in M.OOD_SCORES:
        assert out[f"auroc_{s}"] > 0.95, s
        assert out[f"aupr_out_{s}"] > 0.95, s
        assert out[f"aupr_in_{s}"] > 0.95, s     # scored in the wrong direction this would be ~0.5 or less
    scores = M.ood_scores(np.concatenate([id_members, ood], axis=1))["entropy"]
    is_ood = np.r_[np.zeros(100), np.ones(100)].astype(bool)
    assert out["aupr_in_entropy"] == pytest.approx(average_precision_score(~is_ood, -scores))
    assert out["aupr_out_entropy"] == pytest.approx(average_precision_score(is_ood, scores))
