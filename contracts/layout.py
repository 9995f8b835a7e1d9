"""Names every job and reader agree on: the metric namespace, output file prefixes and
templates, and the staging folder a run writes into before its commit."""
from __future__ import annotations

# Beam counters and distributions of every job, and RunInference's metrics.
METRICS_NAMESPACE = "musicrep"
ERRORS_PREFIX = "errors"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
# DIR/_staging/RUN_ID/: where a run writes until its launcher commits (pipelines.commit,
# and the store's reembed runs); `musicrep store vacuum` removes abandoned ones.
STAGING_DIR = "_staging"
