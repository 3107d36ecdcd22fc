"""Small real and synthetic classification data, with no downloads.

* :func:`digits`: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), shipped
  inside the scikit-learn package, with a fixed stratified train/test split and features
  standardised with the training set's statistics.
* :func:`teacher_student`: inputs ~ N(0, I) labelled by the arg-max of a random teacher
  network, a task a student of the same shape can learn exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.training.config import DATASETS
from gradjax.utils.errors import check_choice, check_int, check_real, invalid
from gradjax.utils.pytree import pytree_dataclass, static_field


@pytree_dataclass
class Dataset:
    """A classification data set split into train and test parts.

    Attributes:
      x_train: ``(n_train, input_dim)`` inputs.
      y_train: ``(n_train,)`` integer labels in ``[0, num_classes)``.
      x_test: ``(n_test, input_dim)`` inputs.
      y_test: ``(n_test,)`` integer labels.
      num_classes: number of classes (static).
      name: a short name (static).
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int = static_field()
    name: str = static_field()

    @property
    def input_dim(self) -> int:
        """The input size."""
        return int(self.x_train.shape[-1])

    @property
    def n_train(self) -> int:
        """The number of training examples."""
        return int(self.x_train.shape[0])


@functools.lru_cache(maxsize=4)
def _digits_split(test_fraction: float, split_seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    # Corner pixels are always 0 in the training set: leave them at 0 rather than divide by 0.
    std = np.where(std > 0, std, 1.0)
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def digits(*, test_fraction: float = 0.2, split_seed: int = 0, dtype: str = "float32") -> Dataset:
    """scikit-learn's handwritten digits with a fixed, stratified train/test split.

    Features (pixel intensities 0..16) are standardised per pixel with the training split's
    mean and standard deviation; pixels constant on the training split stay 0.

    Args:
      test_fraction: fraction of the 1,797 images held out for testing, in (0, 1).
      split_seed: seed of the split (0 is the fixed split every gradjax experiment uses).
      dtype: ``"float32"`` or ``"float64"`` for the inputs.

    Returns:
      A :class:`Dataset` with ``input_dim = 64`` and ``num_classes = 10``
      (1,437 train / 360 test images by default).

    Example:
      >>> data = digits()
      >>> data.x_train.shape, data.x_test.shape
      ((1437, 64), (360, 64))
    """
    check_real("test_fraction", test_fraction, strictly_positive=True)
    if test_fraction >= 1:
        raise invalid("test_fraction", test_fraction, "a number in (0, 1)")
    check_int("split_seed", split_seed, minimum=0)
    check_choice("dtype", dtype, ("float32", "float64"))
    x_tr, y_tr, x_te, y_te = _digits_split(float(test_fraction), int(split_seed))
    return Dataset(
        x_train=jnp.asarray(x_tr, dtype),
        y_train=jnp.asarray(y_tr),
        x_test=jnp.asarray(x_te, dtype),
        y_test=jnp.asarray(y_te),
        num_classes=10,
        name="digits",
    )


def teacher_student(
    key: jax.Array,
    *,
    input_dim: int = 32,
    num_classes: int = 4,
    hidden: int = 64,
    n_train: int = 1024,
    n_test: int = 512,
    dtype: str = "float32",
) -> Dataset:
    """A synthetic task: Gaussian inputs labelled by a random one-hidden-layer tanh teacher.

    The teacher is ``y = argmax(W2 tanh(W1 x))`` with ``W1 ~ N(0, 1/input_dim)``,
    ``W2 ~ N(0, 1/hidden)``; so labels depend on the input non-linearly and a student of
    enough width can reach 100% test accuracy.

    Args:
      key: PRNG key (teacher and inputs).
      input_dim: input size.
      num_classes: number of classes (>= 2).
      hidden: the teacher's hidden width.
      n_train: training examples.
      n_test: test examples.
      dtype: ``"float32"`` or ``"float64"``.

    Returns:
      A :class:`Dataset`.
    """
    check_int("input_dim", input_dim, minimum=1)
    check_int("num_classes", num_classes, minimum=2)
    check_int("hidden", hidden, minimum=1)
    check_int("n_train", n_train, minimum=1)
    check_int("n_test", n_test, minimum=1)
    check_choice("dtype", dtype, ("float32", "float64"))
    k1, k2, kx = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (hidden, input_dim), dtype) / np.sqrt(input_dim).astype(dtype)
    w2 = jax.random.normal(k2, (num_classes, hidden), dtype) / np.sqrt(hidden).astype(dtype)
    x = jax.random.normal(kx, (n_train + n_test, input_dim), dtype)
    y = jnp.argmax(jnp.tanh(x @ w1.T) @ w2.T, axis=-1).astype(jnp.int32)
    return Dataset(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        num_classes=num_classes,
        name="teacher_student",
    )


def get_dataset(name: str, *, key: jax.Array | None = None) -> Dataset:
    """A data set by name: ``"digits"`` or ``"teacher_student"`` (needs ``key``, default 0)."""
    check_choice("dataset", name, DATASETS)
    if name == "digits":
        return digits()
    return teacher_student(jax.random.key(0) if key is None else key)
