"""converters.scoring on hand-computed cases."""

from __future__ import annotations

import pytest

from converters import scoring


def test_accuracy_counts_unanswered_as_wrong_and_macro_f1_by_hand() -> None:
    gold = ["a", "a", "b", "b", "c"]
    predicted = ["a", "b", "b", None, "c"]
    s = scoring.classification_scores(gold, predicted)
    assert s.accuracy == pytest.approx(3 / 5)
    assert s.answered_rate == pytest.approx(4 / 5)
    # a: tp1 fp0 fn1 -> P1 R.5 F 2/3; b: tp1 fp1 fn1 -> F .5; c: F 1
    assert s.per_label["a"]["f1"] == pytest.approx(2 / 3)
    assert s.per_label["b"]["f1"] == pytest.approx(0.5)
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_a_label_only_predicted_counts_in_macro_f1() -> None:
    s = scoring.classification_scores(["a", "a"], ["a", "z"])
    assert set(s.per_label) == {"a", "z"}
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        scoring.classification_scores(["a"], [])


def test_strict_spans_partial_overlap_is_a_miss_and_a_false_positive() -> None:
    gold = [[(0, 5, "PER"), (10, 15, "LOC")]]
    predicted = [[(0, 5, "PER"), (10, 14, "LOC")]]
    s = scoring.span_scores(gold, predicted)
    assert s.overall["tp"] == 1 and s.overall["fp"] == 1 and s.overall["fn"] == 1
    assert s.overall["precision"] == pytest.approx(0.5)
    assert s.per_label["PER"]["f1"] == 1.0
    assert s.per_label["LOC"]["f1"] == 0.0


def test_wrong_label_on_the_right_span_is_wrong() -> None:
    s = scoring.span_scores([[(0, 5, "PER")]], [[(0, 5, "ORG")]])
    assert s.overall["f1"] == 0.0
    assert s.per_label["ORG"]["fp"] == 1 and s.per_label["PER"]["fn"] == 1


def test_a_duplicated_span_is_one_hit_and_one_false_positive() -> None:
    s = scoring.span_scores([[(0, 5, "PER")]], [[(0, 5, "PER"), (0, 5, "PER")]])
    assert (s.overall["tp"], s.overall["fp"], s.overall["fn"]) == (1, 1, 0)
    assert s.overall["precision"] == pytest.approx(0.5)
    assert s.overall["recall"] == 1.0


def test_unanswered_task_misses_its_gold_and_empty_gold_empty_prediction_is_neutral() -> None:
    s = scoring.span_scores([[(0, 3, "LOC")], [], [(1, 2, "PER")]], [None, [], [(1, 2, "PER")]])
    assert (s.overall["tp"], s.overall["fp"], s.overall["fn"]) == (1, 0, 1)
    assert s.answered_rate == pytest.approx(2 / 3)


def test_spans_and_choices_read_from_label_studio_results() -> None:
    result = [
        {"from_name": "label", "type": "labels", "value": {"start": 0, "end": 4, "text": "John", "labels": ["PER"]}},
        {"from_name": "s", "type": "choices", "value": {"choices": ["positive"]}},
    ]
    assert scoring.spans_of(result) == [(0, 4, "PER")]
    assert scoring.choice_of(result) == "positive"
    assert scoring.choice_of(result, "other") is None
    assert scoring.choice_of([]) is None


def test_auroc_by_hand_with_ties() -> None:
    assert scoring.auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert scoring.auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    # one tie between a positive and a negative counts half: pairs (0.5+,0.5-)=.5, (0.5+,0.1-)=1
    assert scoring.auroc([0.5, 0.5, 0.1], [True, False, False]) == pytest.approx(0.75)
    assert scoring.auroc([0.5, 0.6], [True, True]) is None


def test_ece_and_errors_found_in_the_lowest_scored_fifth() -> None:
    scores = [0.95] * 8 + [0.15, 0.15]
    right = [True] * 7 + [False] + [False, False]
    cal = scoring.calibration(scores, right)
    # bin 0.9-1.0: conf .95, acc 7/8 -> gap .075 (weight .8); bin 0.1-0.2: conf .15, acc 0 -> .15 (weight .2)
    assert cal.ece == pytest.approx(0.8 * 0.075 + 0.2 * 0.15)
    # the 2 lowest (20% of 10) hold 2 of the 3 errors
    assert cal.errors_in_lowest_20 == pytest.approx(2 / 3)
    # each of the 7 right tasks beats both 0.15 errors and ties the 0.95 error: 2.5 of 3 pairs
    assert cal.auroc == pytest.approx(2.5 / 3)
    assert [b["count"] for b in cal.bins] == [2, 8]


def test_a_score_of_exactly_one_lands_in_the_last_bin() -> None:
    cal = scoring.calibration([1.0, 0.0], [True, False])
    assert cal.ece == 0.0
    assert [b["count"] for b in cal.bins] == [1, 1]


def test_no_errors_means_no_share() -> None:
    assert scoring.calibration([0.9], [True]).errors_in_lowest_20 is None
    assert scoring.calibration([], []).ece is None


def test_knn_vote_majority_then_similarity_then_nearest() -> None:
    assert scoring.knn_vote([(0.9, "a"), (0.5, "b"), (0.4, "b")]) == "b"
    assert scoring.knn_vote([(0.9, "a"), (0.2, "b")]) == "a"
    assert scoring.knn_vote([(0.5, "a"), (0.5, "b")]) == "a"
    assert scoring.knn_vote([(0.5, None)]) is None
    assert scoring.knn_vote([]) is None
