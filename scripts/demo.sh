#!/usr/bin/env bash
# End to end on a synthetic catalog, on Beam's embedded runner, no cloud needed:
#   synth-catalog → features → pretrain (tiny SimCLR) → embed → probe, and what the
#   pre-training bought: the same probes on a randomly initialised model of the same config.
# Creates .venv in the repository if there is none. Outputs go to ./demo-output
# (or $MUSICREP_DEMO_DIR). MUSICREP_DEMO_TRACKS, MUSICREP_DEMO_DURATION_S and
# MUSICREP_DEMO_STEPS change its size; MUSICREP_DEMO_SEED (default 0) seeds the catalog,
# the probe split, the pre-training and the random initialisation. Pre-training runs
# with TensorFlow's deterministic ops, so one seed gives the same numbers every run.
# Described in docs/demo.md.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
source scripts/setup_env.sh

out="${MUSICREP_DEMO_DIR:-$PWD/demo-output}"
tracks="${MUSICREP_DEMO_TRACKS:-320}"
duration="${MUSICREP_DEMO_DURATION_S:-6}"
steps="${MUSICREP_DEMO_STEPS:-140}"
seed="${MUSICREP_DEMO_SEED:-0}"
musicrep=.venv/bin/musicrep
python=.venv/bin/python
rm -rf "$out"
mkdir -p "$out"

step() { printf '\n=== %s\n' "$*"; }

step "1/6 synthesise a catalog of $tracks labelled tracks of $duration s (wav, flac, mp3, ogg, opus)"
$musicrep synth-catalog "$out/catalog" --tracks "$tracks" --duration-s "$duration" --seed "$seed"

step "2/6 features: decode, resample to 16 kHz, 96-bin log-mel → TFRecord shards"
$musicrep features --input "$out/catalog/track_*" --output "$out/features" --shards 2

# The baseline does not wait for the pre-training: its export and embed job (mostly
# single-threaded start-up) run beside it, their output kept for step 4.
( $musicrep model init --config tiny --seed "$seed" --output "$out/random-init" >/dev/null &&
  $musicrep embed --features "$out/features" --model "$out/random-init" --output "$out/embeddings-random"
) >"$out/random-init.log" 2>&1 &
baseline=$!

step "3/6 pretrain: a tiny SF-NFNet with SimCLR for $steps steps (CPU, deterministic ops), exported for embed"
$musicrep pretrain simclr --features "$out/features" --config tiny --batch-size 32 --steps "$steps" \
  --warmup-steps "$(( steps / 10 ))" --peak-lr 2e-3 --no-mixup --seed "$seed" --deterministic --no-progress \
  --output "$out/pretrain"

step "4/6 the baseline: the same tiny SF-NFNet, randomly initialised (seed $seed), never trained"
if ! wait "$baseline"; then
  cat "$out/random-init.log" >&2
  exit 1
fi
tail -n 3 "$out/random-init.log"

step "5/6 embed with the pre-trained export: 3 s windows at 0.5 Hz → one embedding per track → Parquet"
$musicrep embed --features "$out/features" --model "$out/pretrain/export" --output "$out/embeddings"
$python - "$out/embeddings" <<'PY'
import sys
import pandas as pd
from musicrep.probes.data import read_embeddings  # reads the directory through its manifest
embeddings = read_embeddings(sys.argv[1])
print(f"{len(embeddings.track_ids)} tracks × {embeddings.vectors.shape[1]}-d, model {embeddings.model_id[:12]}…; first rows:")
frame = pd.DataFrame({"track_id": embeddings.track_ids[:3],
                      "embedding": [f"[{e[0]:.3f}, {e[1]:.3f}, … ]" for e in embeddings.vectors[:3]]})
print(frame.to_string(index=False))
PY

# The catalog's own split is 80/10/10; with ~10 % of the tracks as test a 95 % interval
# is ±0.2 wide. The probes use 50/15/35 instead (pre-training saw no labels, so every
# track may be a probe's test track).
$python - "$out/catalog/labels.csv" "$out/labels-probe.csv" "$seed" <<'PY'
import sys
import numpy as np
import pandas as pd
labels = pd.read_csv(sys.argv[1])
rank = np.random.default_rng(int(sys.argv[3])).permutation(len(labels)) / len(labels)
labels["split"] = np.select([rank < 0.50, rank < 0.65], ["train", "valid"], "test")
labels.to_csv(sys.argv[2], index=False)
print("probe split: " + ", ".join(f"{name} {count}" for name, count in labels["split"].value_counts().items()))
PY

step "6/6 probe both models: instrument (linear probe, accuracy) and key (MLP probe, MIREX weighted score)"
bash scripts/demo_probes.sh "$out" "$steps"

cat <<SUMMARY

Outputs under $out:
  catalog/           synthetic audio + labels.csv (track_id, split, pitch, key, instrument, tags)
  features/          features-*.tfrecord.gz: one tf.train.Example per track (log_mel [frames, 96], ...)
  pretrain/          config.json, metrics.jsonl, checkpoints, export/ (model.keras + model.json)
  random-init/       the untrained export of the same config (the baseline)
  embeddings*/       embeddings-*.parquet: one row per track (embedding, model_id, ...), _MANIFEST.json
  probes/            one report per model and task (report.json, report.md, report.html)
                     suite.md / suite.json / suite.html: the models side by side
  Demo took $(( $(date +%s) - started )) s, install included.

Open in a browser (self-contained pages, no network needed):
  $out/probes/suite.html                          (the two models side by side)
  $out/probes/pretrained/Instrument/report.html   (one probe's figures)
SUMMARY
