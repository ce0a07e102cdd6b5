"""Each downstream metric against a hand-computed example."""

import numpy as np
import pytest
import torch


def test_recall_at_k_and_ranks_on_a_tiny_similarity_matrix():
    from medmap.downstream.retrieval import match_ranks, recall_at_k, retrieval_metrics

    # rows = reports (queries), columns = volumes; the match of row i is column i
    sim = np.array([[0.9, 0.1, 0.2],    # match ranks 1
                    [0.8, 0.5, 0.1],    # 0.8 > 0.5: rank 2
                    [0.7, 0.6, 0.3]])   # 0.7, 0.6 > 0.3: rank 3
    assert match_ranks(sim).tolist() == [1, 2, 3]
    assert recall_at_k([1, 2, 3], 1) == pytest.approx(1 / 3)
    assert recall_at_k([1, 2, 3], 2) == pytest.approx(2 / 3)
    m = retrieval_metrics(sim, ks=(1, 2, 5, 50))
    r2v = m["report_to_volume"]
    assert r2v["R@1"] == pytest.approx(1 / 3) and r2v["R@2"] == pytest.approx(2 / 3)
    assert r2v["R@5"] == 1.0 and r2v["R@50"] == 1.0          # K capped at N = 3
    assert r2v["median_rank"] == 2.0 and r2v["mean_rank"] == 2.0
    # volume -> report uses the columns: col 0 match 0.9 (rank 1); col 1: 0.5 < 0.6 (rank 2);
    # col 2: 0.3 vs 0.2, 0.1 (rank 1)
    v2r = m["volume_to_report"]
    assert v2r["R@1"] == pytest.approx(2 / 3) and v2r["median_rank"] == 1.0


def test_ties_with_the_match_do_not_count_against_it():
    from medmap.downstream.retrieval import match_ranks

    assert match_ranks(np.ones((3, 3))).tolist() == [1, 1, 1]


def test_bleu_on_known_sentences():
    from medmap.downstream.report_gen import bleu_scores

    same = bleu_scores(["The lesion is hyperintense."], ["the lesion is hyperintense"])
    assert all(v == pytest.approx(1.0) for v in same.values())
    # "the cat is on the mat" vs reference "the cat sat on the mat" (6 words each, no brevity
    # penalty): unigram precision 5/6, bigram 3/5 (the cat, on the, the mat), trigram 1/4
    # (on the mat), no 4-gram match
    b = bleu_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert b["BLEU-1"] == pytest.approx(5 / 6)
    assert b["BLEU-2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5)
    assert b["BLEU-3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert b["BLEU-4"] == 0.0
    # brevity penalty: a 3-word hypothesis of a 6-word reference, all unigrams correct
    bp = bleu_scores(["the cat sat on the mat"], ["the cat sat"])
    assert bp["BLEU-1"] == pytest.approx(np.exp(1 - 6 / 3))


def test_dice_of_a_hand_example():
    from medmap.downstream.segment import dice_scores

    pred = torch.zeros(2, 1, 4, 4, 4)
    target = torch.zeros(2, 1, 4, 4, 4)
    pred[0, 0, 0, 0, :4] = 1          # 4 voxels
    target[0, 0, 0, 0, 2:4] = 1       # 2 voxels, both predicted: dice = 2*2 / (4+2)
    target[0, 0, 1, 1, 1] = 1         # + 1 missed voxel: dice = 2*2 / (4+3)
    pred[1, 0, 3, 3, 3] = 1           # case 2: empty target -> NaN (ignored)
    d = dice_scores(pred, target)
    assert d[0] == pytest.approx(4 / 7)
    assert np.isnan(d[1])


def test_per_class_auc():
    from medmap.downstream.zeroshot import per_class_auc

    labels = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.4], [0.3, 0.7], [0.6, 0.2]])
    per, macro = per_class_auc(labels, scores, ["a", "b"])
    # class a: positives 0.9, 0.8 vs negatives 0.3, 0.6 -> 1.0; class b: positives 0.7, 0.2 vs
    # negatives 0.1, 0.4 -> pairs won: (0.7>0.1, 0.7>0.4, 0.2>0.1) = 3/4
    assert per == {"a": 1.0, "b": 0.75} and macro == pytest.approx(0.875)
    per, macro = per_class_auc(np.array([0, 0]), scores[:2], ["a", "b"])
    assert per == {"a": None, "b": None} and macro is None
