"""The bottom layer: what the jobs agree on, with no computation behind it.

`feature_config` (the front end's settings), `shards` (the features job's TFRecord
records), `schema` (the embed job's Parquet rows and the store's Delta table),
`sidecar` (a model export's model.json, read without TensorFlow), `window_spec` (how
tracks become windows and one vector), `tracks` (track ids
from globs and manifests) and `layout` (names of what jobs write: metric namespace,
output prefixes, the staging folder). `features/`, `model/`, `store/`, `pipelines/` and
`probes/` stand on it; it imports none of them (tests/test_layers.py).
"""
