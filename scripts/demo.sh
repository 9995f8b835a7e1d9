#!/usr/bin/env bash
# End to end on a synthetic catalog, on Beam's embedded runner, no cloud needed:
#   synth-catalog → features → pretrain (tiny SimCLR) → embed → probe.
# Creates .venv in the repository if there is none. Outputs go to ./demo-output
# (or $MUSICREP_DEMO_DIR). MUSICREP_DEMO_TRACKS and MUSICREP_DEMO_STEPS make it bigger.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

out="${MUSICREP_DEMO_DIR:-$PWD/demo-output}"
tracks="${MUSICREP_DEMO_TRACKS:-64}"
steps="${MUSICREP_DEMO_STEPS:-100}"
musicrep=.venv/bin/musicrep
rm -rf "$out"
mkdir -p "$out"

step() { printf '\n=== %s\n' "$*"; }

step "1/5 synthesise a catalog of $tracks labelled tracks (wav, flac, mp3, ogg, opus)"
$musicrep synth-catalog "$out/catalog" --tracks "$tracks" --duration-s 8

step "2/5 features: decode, resample to 16 kHz, 96-bin log-mel → TFRecord shards"
$musicrep features --input "$out/catalog/track_*" --output "$out/features" --shards 2

step "3/5 pretrain: a tiny SF-NFNet with SimCLR for $steps steps (CPU), exported for embed"
$musicrep pretrain simclr --features "$out/features/features-*.tfrecord.gz" --config tiny \
  --batch-size 32 --steps "$steps" --warmup-steps 20 --peak-lr 1e-3 --no-progress --output "$out/pretrain"

step "4/5 embed: 3 s windows at 0.5 Hz → one embedding per track → Parquet"
$musicrep embed --features "$out/features/features-*.tfrecord.gz" --model "$out/pretrain/export" \
  --output "$out/embeddings"
.venv/bin/python - "$out/embeddings" <<'PY'
import glob, sys
import pandas as pd
frame = pd.concat(pd.read_parquet(f) for f in sorted(glob.glob(f"{sys.argv[1]}/embeddings-*.parquet")))
frame["embedding"] = frame["embedding"].map(lambda e: f"[{e[0]:.3f}, {e[1]:.3f}, … ] ({len(e)}-d)")
print(frame[["track_id", "duration_s", "n_windows", "embedding", "model_id"]].head(5).to_string(index=False))
PY

step "5/5 probe: instrument (multiclass) and key (MIREX score) from the embeddings"
for task in "multiclass --label-column instrument" "key --label-column key"; do
  name="${task%% *}"
  $musicrep probe --embeddings "$out/embeddings/embeddings-*.parquet" --labels "$out/catalog/labels.csv" \
    --task $task --grid "lr=1e-3,steps=300,l2=0" --seeds 2 --warmup-steps 30 --output "$out/probe-$name"
  cat "$out/probe-$name/report.md"
done

cat <<SUMMARY

Outputs under $out:
  catalog/      synthetic audio + labels.csv (track_id, split, pitch, key, instrument, tags)
  features/     features-*.tfrecord.gz: one tf.train.Example per track (log_mel [frames, 96], ...)
                errors-*.jsonl: inputs that could not be decoded, with the reason
  pretrain/     config.json, metrics.jsonl, checkpoints, export/ (model.keras + model.json)
  embeddings/   embeddings-*.parquet: one row per track (embedding, model_id, feature_config_sha256, ...)
  probe-*/      report.json and report.md: probe scores on the test split
SUMMARY
