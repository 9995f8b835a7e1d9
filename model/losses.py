"""The pre-training losses of SPEC §3: NT-Xent (SimCLR) and binary cross-entropy (supervised).

Both come in two forms: a per-example loss (what the trainer averages over the *global*
batch in its one loss-scaling place, `tf.nn.compute_average_loss`) and a mean over the
batch for use on one device (`nt_xent`, the public formula the tests check).
"""
from __future__ import annotations

import tensorflow as tf

from musicrep.errors import ConfigError
from musicrep.model.training_config import DEFAULT_TEMPERATURE

# Added to the logits of each anchor with itself, as the reference does (SPEC §3).
SELF_SIMILARITY_MASK = 1e10


def _l2_normalise(z: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)


def nt_xent_per_example(
    z_a: tf.Tensor,
    z_b: tf.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    *,
    gather_across_replicas: bool = True,
) -> tf.Tensor:
    """NT-Xent of each positive pair: CE(i → i+N) + CE(i+N → i), shape [n_local] float32.

    z_a, z_b: [n_local, d] projections of the two views (row i of each is one pair).
    The reference formulation (SPEC §3): stack both views into [2N, d], L2-normalise,
    logits = cosine / τ with each row's similarity to itself masked (−1e10); the positive
    of row i is row i+N and vice versa. Every other row of the stack is a negative.

    Inside a `tf.distribute` replica context with more than one replica, the views of
    all replicas are gathered (in replica order) so the negatives span the global batch,
    as SimCLR does; the local anchors are this replica's rows, and gradients flow back
    through the gather. The mean of the result over the global batch is `nt_xent` of
    the global batch.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    a = _l2_normalise(z_a)
    b = _l2_normalise(z_b)
    n_local = tf.shape(a)[0]
    context = tf.distribute.get_replica_context()
    if gather_across_replicas and context is not None and context.num_replicas_in_sync > 1:
        all_a = context.all_gather(a, axis=0)
        all_b = context.all_gather(b, axis=0)
        offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * n_local
    else:
        all_a, all_b, offset = a, b, tf.constant(0, tf.int32)
    n_global = tf.shape(all_a)[0]
    positives = offset + tf.range(n_local)  # column of each anchor's own index in the global batch
    self_mask = tf.one_hot(positives, n_global, dtype=tf.float32) * SELF_SIMILARITY_MASK
    inverse_t = 1.0 / temperature
    logits_aa = tf.matmul(a, all_a, transpose_b=True) * inverse_t - self_mask
    logits_bb = tf.matmul(b, all_b, transpose_b=True) * inverse_t - self_mask
    logits_ab = tf.matmul(a, all_b, transpose_b=True) * inverse_t
    logits_ba = tf.matmul(b, all_a, transpose_b=True) * inverse_t
    # Row i of the stacked formulation sees [other view | same view]; the positive is in
    # the first block at the anchor's own global index.
    loss_a = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=positives, logits=tf.concat([logits_ab, logits_aa], axis=1)
    )
    loss_b = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=positives, logits=tf.concat([logits_ba, logits_bb], axis=1)
    )
    return loss_a + loss_b


def nt_xent(z_a: tf.Tensor, z_b: tf.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> tf.Tensor:
    """SimCLR's NT-Xent on one device: the mean over the N anchors of CE(i→i+N) + CE(i+N→i).

    z_a, z_b: [N, d] (any float dtype; computed in float32). Returns a float32 scalar.
    """
    return tf.reduce_mean(nt_xent_per_example(z_a, z_b, temperature, gather_across_replicas=False))


def binary_cross_entropy_per_example(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Sigmoid cross-entropy from logits averaged over the K labels: [B, K] → [B] float32.

    `labels` may be soft (mixup); this is Keras' `BinaryCrossentropy(from_logits=True)`
    before its batch reduction.
    """
    labels = tf.cast(labels, tf.float32)
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)
