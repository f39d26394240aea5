"""The row format's one home: label-column resolution and grouping by task."""

import pytest

from dreamprm_trl.schema import group_by_task, label_key


def test_group_by_task_keeps_first_seen_order_and_order_within_task():
    groups = group_by_task(["b", "a", "b", "c", "a"], [1, 2, 3, 4, 5], [True, False, False, True, True])
    assert list(groups) == ["b", "a", "c"]
    assert groups["b"] == ([1, 3], [True, False])
    assert groups["a"] == ([2, 5], [False, True])
    assert groups["c"] == ([4], [True])


def test_group_by_task_refuses_ragged_columns():
    with pytest.raises(ValueError, match="column 1 has 2 values for 3 task ids"):
        group_by_task(["a", "b", "c"], [1, 2, 3], [1, 2])


def test_label_key_prefers_labels_then_mc_labels_and_honours_an_explicit_key():
    assert label_key(["prompt", "mc_labels", "labels"]) == "labels"
    assert label_key(["prompt", "mc_labels"]) == "mc_labels"
    assert label_key(["prompt", "steps"]) is None
    assert label_key(["prompt", "mine", "labels"], "mine") == "mine"
    assert label_key(["prompt", "labels"], "mine") is None
