"""The pre-training input pipeline (SPEC §3): log-mel shards → batches of 3 s snippets.

Sampling, and what it guarantees
--------------------------------
The paper draws tracks uniformly at random *with replacement* and cuts one random 3 s
snippet per draw, without padding. Gzipped TFRecord shards have no random access, so the
pipeline streams instead of seeking, and never holds the catalog in memory:

1. Every pass reads all shards once, in a fresh seeded random order, interleaving
   `cycle_length` shards record by record.
2. Each track is drawn k times in that pass, k ~ Poisson(λ) independently per track and
   pass ("Poisson bootstrap"; λ = `draws_per_track`, 1 by default): for λ = 1 the
   streaming limit of n draws with replacement from n tracks (Binomial(n, 1/n) →
   Poisson(1)). Every usable track has the same expected number of draws per pass, a
   track may be drawn several times or not at all, and over P passes its count is
   Poisson(λP) — the counts of uniform sampling with replacement, not the equal counts of
   epochs. Reading a record (decompressing a whole track) costs far more than cutting a
   snippet, so λ > 1 multiplies the pipeline's throughput on long tracks, at the price of
   more draws of one track close together in the stream (the shuffle buffer should then
   hold several batches).
3. Each draw gets its own uniformly random snippet start in [0, n_frames − 300]; tracks
   shorter than one snippet are never drawn (no padding) and are counted.
4. Draws pass through a shuffle buffer (`shuffle_buffer` snippets) before batching, so a
   track's copies and neighbouring tracks are spread over batches.
What it does not guarantee: a single batch is a uniform sample of the window of shards
being read (cycle_length shards + the shuffle buffer), not of the whole catalog; with
many shards per pass and shards written in random order (the features job's default)
the difference is immaterial. Memory is bounded by the buffers: about
(shuffle_buffer + prefetched batches) × views × 300 × n_mels × 4 bytes, plus one record per
interleaved shard.

SimCLR pairs (`positive_max_distance_s`): view a starts uniformly over the valid starts;
view b uniformly over the valid starts whose centre lies strictly less than the limit
from a's centre (|Δ| ≤ ceil(limit · fps) − 1 frames). `None` is the "clip" mode for
AudioSet-like 10 s clips: both views anywhere in the same clip, independently.

Every random choice is stateless, seeded by (seed, input pipeline, element index), and
all stages run deterministically, so the stream is a function of the seed and a
`tf.data` iterator checkpoint restores it exactly (the shuffle buffer is part of that
checkpoint).

Elements are dicts of batched tensors: `log_mel` [B, n_mels, 300] float32 frequency-first
(`log_mel_b` too for pairs), `track_id` [B] string, `start` (and `start_b`) [B] int64
snippet start frames, `labels` [B, K] float32 (supervised), and running counts of the
records read so far by this pipeline: `tracks_read`, `tracks_short`, `tracks_unlabelled`
[B] int64 (as of each example's draw).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import tensorflow as tf

from musicrep.errors import ConfigError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.contracts.shard_dataset import FEATURE_SPEC, check_schema_version, decode_log_mel_values, log_mel_itemsize
from musicrep.contracts.shards import SHARD_KIND, parse_record
from musicrep.labels import read_labels as read_label_table
from musicrep.labels import split_tags
from musicrep.manifest import resolve_files
from musicrep.model.mixup import mixup
from musicrep.model.sampling import SamplingConfig

logger = logging.getLogger(__name__)

COUNT_KEYS = ("tracks_read", "tracks_short", "tracks_unlabelled")
_KEYS = ("schema_version", "track_id", "log_mel", "log_mel_dtype", "n_frames", "n_mels")
_SNIPPET_SPEC = {key: FEATURE_SPEC[key] for key in _KEYS}


def shard_files(pattern: str) -> list[str]:
    """The shards of `pattern`: a features output directory (its manifest) or a glob."""
    return resolve_files(pattern, kind=SHARD_KIND)


def read_feature_config(pattern: str) -> FeatureConfig:
    """The front end the shards of `pattern` were made with (read from their first record)."""
    dataset = tf.data.TFRecordDataset(shard_files(pattern)[:1], compression_type="GZIP").take(1)
    for serialized in dataset:
        record = parse_record(serialized.numpy())
        return FeatureConfig.from_json(record.feature_config)
    raise ConfigError(f"the first shard of {pattern!r} holds no record")


def max_start_offset(positive_max_distance_s: float, *, frames_per_second: float) -> int:
    """Largest |start_a − start_b| (frames) whose centres are strictly closer than the limit."""
    if positive_max_distance_s <= 0:
        raise ConfigError(f"positive_max_distance_s must be > 0, got {positive_max_distance_s}")
    return math.ceil(positive_max_distance_s * frames_per_second) - 1


# ---------------------------------------------------------------------------- labels


@dataclasses.dataclass(frozen=True)
class Labels:
    """Supervised targets: each labelled track's tags as indices into `vocabulary` (sorted)."""

    track_ids: tuple[str, ...]
    tag_indices: tuple[tuple[int, ...], ...]
    vocabulary: tuple[str, ...]

    @property
    def n_labels(self) -> int:
        return len(self.vocabulary)

    def multi_hot(self) -> np.ndarray:
        """[n_tracks, K] float32 (for tests and small catalogs)."""
        out = np.zeros((len(self.track_ids), self.n_labels), np.float32)
        for row, indices in enumerate(self.tag_indices):
            out[row, list(indices)] = 1.0
        return out


def read_labels(path: str, *, vocabulary: tuple[str, ...] | None = None) -> Labels:
    """Reads `track_id` + `tags` from a labels file (see `musicrep.labels`).

    A track listed with no tags is labelled all-negative; tracks absent from the file are
    skipped by the supervised sampler (and counted). `vocabulary` fixes the label order
    (e.g. to resume); by default it is the sorted set of tags in the file.
    """
    table = read_label_table(path, required=("track_id", "tags"))
    track_ids = [str(value) for value in table.column("track_id").to_pylist()]
    if len(set(track_ids)) != len(track_ids):
        raise ConfigError(f"{path}: track_id values repeat")
    tags = [split_tags(value) for value in table.column("tags").to_pylist()]
    if vocabulary is None:
        vocabulary = tuple(sorted({tag for row in tags for tag in row}))
    index = {tag: i for i, tag in enumerate(vocabulary)}
    unknown = sorted({tag for row in tags for tag in row} - set(index))
    if unknown:
        raise ConfigError(f"{path}: tags not in the vocabulary: {unknown[:10]}")
    if not vocabulary:
        raise ConfigError(f"{path}: no tags at all")
    return Labels(
        track_ids=tuple(track_ids),
        tag_indices=tuple(tuple(sorted({index[tag] for tag in row})) for row in tags),
        vocabulary=tuple(vocabulary),
    )


def _label_table(labels: Labels) -> tf.lookup.StaticHashTable:
    # track_id → "i|j|k" (tag indices); "" for tracks labelled all-negative. Missing: "-".
    values = ["|".join(str(i) for i in row) for row in labels.tag_indices]
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(labels.track_ids, tf.string), tf.constant(values, tf.string)
        ),
        default_value="-",
    )


def _multi_hot(encoded: tf.Tensor, n_labels: int) -> tf.Tensor:
    parts = tf.strings.split(encoded, "|")
    parts = tf.boolean_mask(parts, tf.strings.length(parts) > 0)
    indices = tf.strings.to_number(parts, tf.int32)
    return tf.minimum(tf.reduce_sum(tf.one_hot(indices, n_labels, dtype=tf.float32), axis=0), 1.0)


# ---------------------------------------------------------------------------- sampler


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How one input pipeline draws snippets (see the module docstring).

    Attributes:
      batch_size: snippets (or pairs) per batch of this input pipeline.
      pairs: two views per draw (SimCLR) instead of one.
      sampling: the settings a user chooses (musicrep.model.sampling.SamplingConfig).
      seed: the stream is a function of this seed and `pipeline_id`.
      pipeline_id: index of this input pipeline (one per worker) so workers draw differently.
      features: the front end of the shards (mel bands per frame, frames per second).
    """

    batch_size: int
    pairs: bool = False
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    pipeline_id: int = 0
    features: FeatureConfig = DEFAULT_FEATURE_CONFIG

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.sampling.positive_max_distance_s is not None:
            self.max_start_offset()

    @property
    def shuffle_buffer_size(self) -> int:
        buffer = self.sampling.shuffle_buffer
        return buffer if buffer is not None else max(2 * self.batch_size, 256)

    def max_start_offset(self) -> int:
        return max_start_offset(self.sampling.positive_max_distance_s,
                                frames_per_second=self.features.frames_per_second)

    @property
    def stream_seed(self) -> int:
        """First word of every stateless seed: the run seed mixed with the pipeline index."""
        return (self.seed * 1_000_003 + self.pipeline_id) % (2**62)


def _draw_snippets(serialized, index, *, config: SamplerConfig, table, n_labels: int):
    """One record → its k ~ Poisson(λ) draws, as a dict of tensors with leading dimension k."""
    parsed = tf.io.parse_single_example(serialized, _SNIPPET_SPEC)
    n_frames = parsed["n_frames"]
    n_mels = parsed["n_mels"]
    snippet = tf.constant(config.sampling.snippet_frames, tf.int64)
    n_mels_expected = config.features.n_mels
    checks = [
        check_schema_version(parsed["schema_version"]),
        tf.debugging.assert_equal(
            n_mels, tf.constant(n_mels_expected, tf.int64),
            message=f"shard record does not have the {n_mels_expected} mel bands of the first shard's front end",
        ),
    ]
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(config.stream_seed, tf.int64), index]), num=3
    )
    short = n_frames < snippet
    unlabelled = tf.constant(False)
    encoded = tf.constant("")
    if table is not None:
        encoded = table.lookup(parsed["track_id"])
        unlabelled = tf.logical_and(tf.logical_not(short), tf.equal(encoded, "-"))
    draws = tf.random.stateless_poisson([], seed=seeds[0], lam=config.sampling.draws_per_track, dtype=tf.int32)
    draws = tf.where(tf.logical_or(short, unlabelled), 0, draws)
    n_starts = tf.maximum(n_frames - snippet + 1, 1)  # valid starts: 0 … n_frames − snippet
    uniforms = tf.random.stateless_uniform([draws, 2], seed=seeds[1], dtype=tf.float64)

    def uniform_int(u, low, count):  # low + floor(u · count), per element
        return low + tf.minimum(tf.cast(tf.floor(u * tf.cast(count, tf.float64)), tf.int64), count - 1)

    start_a = uniform_int(uniforms[:, 0], tf.zeros([draws], tf.int64), n_starts)
    out = {"track_id": tf.fill([draws], parsed["track_id"]), "start": start_a}
    starts = [start_a]
    if config.pairs:
        if config.sampling.positive_max_distance_s is None:
            start_b = uniform_int(uniforms[:, 1], tf.zeros([draws], tf.int64), n_starts)
        else:
            limit = tf.constant(config.max_start_offset(), tf.int64)
            low = tf.maximum(start_a - limit, 0)
            high = tf.minimum(start_a + limit, n_starts - 1)
            start_b = uniform_int(uniforms[:, 1], low, high - low + 1)
        out["start_b"] = start_b
        starts.append(start_b)
    bytes_per_frame = n_mels * log_mel_itemsize(parsed["log_mel_dtype"])
    with tf.control_dependencies(checks):
        for key, start in zip(("log_mel", "log_mel_b"), starts):
            # Cut the snippet's bytes out of the record before decoding: a 4-minute track
            # decodes 300 frames, not 24,000.
            raw = tf.strings.substr(
                parsed["log_mel"], start * bytes_per_frame, tf.fill([draws], snippet * bytes_per_frame)
            )
            values = decode_log_mel_values(raw, parsed["log_mel_dtype"])
            values = tf.reshape(values, [draws, config.sampling.snippet_frames, n_mels_expected])
            out[key] = tf.transpose(values, [0, 2, 1])  # time-major on disk → frequency-first
    if table is not None:
        one = _multi_hot(tf.where(tf.equal(encoded, "-"), "", encoded), n_labels)
        out["labels"] = tf.tile(one[tf.newaxis], [draws, 1])
    out["_flags"] = tf.cast(tf.stack([short, unlabelled]), tf.int64)
    return out


def _count(state, element):
    """Running (records read, short, unlabelled) counts, attached to each draw."""
    state = state + tf.concat([tf.ones([1], tf.int64), element.pop("_flags")], axis=0)
    draws = tf.shape(element["start"])[0]
    for i, key in enumerate(COUNT_KEYS):
        element[key] = tf.fill([draws], state[i])
    return state, element


def sample_snippets(pattern: str, config: SamplerConfig, *, labels: Labels | None = None) -> tf.data.Dataset:
    """The infinite, batched snippet stream of the shards matching `pattern` (see module doc)."""
    files = shard_files(pattern)
    seed = config.stream_seed
    table = _label_table(labels) if labels is not None else None
    n_labels = labels.n_labels if labels is not None else 0
    cycle = min(config.sampling.cycle_length, len(files))
    paths = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    records = paths.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=cycle,
        deterministic=True,
    )
    draws = (
        tf.data.Dataset.zip(records, tf.data.Dataset.counter())
        .map(
            lambda serialized, index: _draw_snippets(
                serialized, index, config=config, table=table, n_labels=n_labels
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .scan(tf.zeros([3], tf.int64), _count)
        .unbatch()
        .shuffle(config.shuffle_buffer_size, seed=seed + 1, reshuffle_each_iteration=True)
    )
    batches = draws.batch(config.batch_size, drop_remainder=True)
    if config.sampling.mixup:
        batches = tf.data.Dataset.zip(batches, tf.data.Dataset.counter()).map(
            lambda batch, index: _mix_batch(batch, index, config),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    options = tf.data.Options()
    options.deterministic = True
    # The label table is immutable: checkpointing the iterator need not save it.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def _mix_batch(batch: dict, index: tf.Tensor, config: SamplerConfig) -> dict:
    seed_word = tf.constant((config.stream_seed + 7919) % (2**62), tf.int64)
    seeds = tf.random.experimental.stateless_split(tf.stack([seed_word, index]), num=2)
    batch = dict(batch)
    gains = {"alpha": config.sampling.mixup_alpha, "beta": config.sampling.mixup_beta}
    batch["log_mel"], mixed = mixup(batch["log_mel"], seeds[0], labels=batch.get("labels"), **gains)
    if mixed is not None:
        batch["labels"] = mixed
    if "log_mel_b" in batch:  # SimCLR: the second view gets its own gains and partners
        batch["log_mel_b"], _ = mixup(batch["log_mel_b"], seeds[1], **gains)
    return batch
