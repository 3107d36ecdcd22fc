"""Zoo: a ResNet-style CNN with BatchNorm in train mode (Flax Linen).

A 3x3 convolution stem, ``blocks`` residual blocks ``relu(x + BN(conv(relu(BN(conv(x))))))``
and a pooled linear head, diagnosed in train mode (batch statistics, ``batch_stats``
updated and discarded by the measurement).

Verdict gradjax gives: **healthy**, with BatchNorm and residual blocks found from the
model. Why it is right: each block adds a BatchNorm-scaled branch to its input, so the
backward signal passes the identity path undamped; ``||dL/da_l||`` changes by a few per
cent per block (measured growth near 1), far from the 10x decade thresholds.

    gradjax diagnose --model examples.resnet_bn_linen:make --out out
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class ResBlock(nn.Module):
    """Post-activation residual block of two 3x3 convolutions with BatchNorm."""

    channels: int
    train: bool = True

    def setup(self):
        self.conv1 = nn.Conv(self.channels, (3, 3), use_bias=False)
        self.bn1 = nn.BatchNorm(use_running_average=not self.train)
        self.conv2 = nn.Conv(self.channels, (3, 3), use_bias=False)
        self.bn2 = nn.BatchNorm(use_running_average=not self.train)

    def __call__(self, x):
        h = nn.relu(self.bn1(self.conv1(x)))
        return nn.relu(x + self.bn2(self.conv2(h)))


class ResNet(nn.Module):
    """Stem, residual blocks, global average pool, linear head (10 classes)."""

    blocks: int = 4
    channels: int = 8
    train: bool = True

    def setup(self):
        self.stem = nn.Conv(self.channels, (3, 3), use_bias=False)
        self.stem_bn = nn.BatchNorm(use_running_average=not self.train)
        self.body = [ResBlock(self.channels, self.train) for _ in range(self.blocks)]
        self.head = nn.Dense(10)

    def __call__(self, x):
        h = nn.relu(self.stem_bn(self.stem(x)))
        for block in self.body:
            h = block(h)
        return self.head(jnp.mean(h, axis=(1, 2)))


def make(*, blocks: int = 4, batch: int = 16, seed: int = 0):
    """The model, its variables and one batch of 8x8 images with one-hot targets.

    Args:
      blocks: residual blocks.
      batch: examples in the batch.
      seed: PRNG seed.

    Returns:
      ``(model, variables, (x, y))``.
    """
    k_init, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    model = ResNet(blocks=blocks)
    x = jax.random.normal(k_x, (batch, 8, 8, 1))
    y = jax.nn.one_hot(jax.random.randint(k_y, (batch,), 0, 10), 10)
    variables = model.init(k_init, x)
    return model, variables, (x, y)
