"""Tests for gradjax.training.data: the digits split and the teacher-student task."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from gradjax.training import data
from gradjax.utils.errors import GradjaxInputError


def test_digits_split_is_fixed_stratified_and_standardised():
    d = data.digits()
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.num_classes == 10 and d.input_dim == 64 and d.n_train == 1437
    # Stratified: every class keeps its share (load_digits has 174..183 images per class).
    counts = np.bincount(np.asarray(d.y_test), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37
    # Standardised on the training split: mean 0, std 1 on non-constant pixels.
    xtr = np.asarray(d.x_train, np.float64)
    std = xtr.std(axis=0)
    varying = std > 0
    np.testing.assert_allclose(xtr.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1.0, rtol=1e-5)
    # Same split on every call.
    d2 = data.digits()
    np.testing.assert_array_equal(d.y_test, d2.y_test)
    np.testing.assert_array_equal(d.x_test, d2.x_test)


def test_digits_are_the_sklearn_images():
    # Independent source: undo the standardisation and find every image in load_digits.
    d = data.digits()
    raw = load_digits()
    xtr = np.asarray(d.x_train, np.float64)
    x_all = np.concatenate([xtr, np.asarray(d.x_test, np.float64)])
    y_all = np.concatenate([np.asarray(d.y_train), np.asarray(d.y_test)])
    # Each pixel is an affine map of the raw intensity; recover it by matching ranks, undo it,
    # and the rows (as a multiset: the split is a permutation) must be load_digits' images.
    raw_sorted = raw.data[np.lexsort(raw.data.T)]
    slope = np.ones(64)
    icpt = np.zeros(64)
    for j in range(64):
        col = raw.data[:, j]
        if col.std() == 0:
            continue
        a = np.polyfit(x_all[:, j], _match_column(x_all[:, j], col), 1)
        slope[j], icpt[j] = a
    rebuilt = np.rint(x_all * slope + icpt)
    rebuilt_order = np.lexsort(rebuilt.T)
    np.testing.assert_array_equal(rebuilt[rebuilt_order], raw_sorted)
    np.testing.assert_array_equal(np.sort(y_all), np.sort(raw.target))


def _match_column(standardised: np.ndarray, raw_col: np.ndarray) -> np.ndarray:
    # A monotone affine map preserves order: the k-th smallest standardised value is the
    # k-th smallest raw value.
    out = np.empty_like(raw_col, dtype=np.float64)
    out[np.argsort(standardised, kind="stable")] = np.sort(raw_col)
    return out


def test_teacher_student_labels_follow_the_teacher(getkey):
    key = getkey()
    d = data.teacher_student(key, input_dim=8, num_classes=3, hidden=16, n_train=200, n_test=100)
    assert d.x_train.shape == (200, 8) and d.x_test.shape == (100, 8)
    # Independent recomputation of the teacher in float64 NumPy from the same draws.
    k1, k2, kx = jax.random.split(key, 3)
    w1 = np.asarray(jax.random.normal(k1, (16, 8)), np.float64) / np.sqrt(8)
    w2 = np.asarray(jax.random.normal(k2, (3, 16)), np.float64) / np.sqrt(16)
    x = np.asarray(jax.random.normal(kx, (300, 8)), np.float64)
    logits = np.tanh(x @ w1.T) @ w2.T
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # float32 ties are not a disagreement
    y = np.concatenate([np.asarray(d.y_train), np.asarray(d.y_test)])
    np.testing.assert_array_equal(y[clear], np.argmax(logits, axis=1)[clear])
    assert set(np.unique(y)) == {0, 1, 2}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: data.digits(test_fraction=1.5), "test_fraction"),
        (lambda: data.digits(dtype="int8"), "dtype"),
        (lambda: data.teacher_student(jax.random.key(0), num_classes=1), "num_classes"),
        (lambda: data.get_dataset("mnist"), "dataset"),
    ],
)
def test_bad_input(call, field):
    with pytest.raises(GradjaxInputError, match=field):
        call()
