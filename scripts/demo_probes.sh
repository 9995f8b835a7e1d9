#!/usr/bin/env bash
# The demo's last step (scripts/demo.sh calls it; rerun it alone on a demo's outputs):
#   bash scripts/demo_probes.sh OUT PRETRAIN_STEPS
# probe-suite over OUT/embeddings (pre-trained) and OUT/embeddings-random (the same
# config, untrained) with OUT/labels-probe.csv, then says what the pre-training bought.
# Instrument uses the paper's NSynth instrument preset (a linear probe: what the
# embedding carries, not what an MLP can build from it); key the generic 1×512 MLP.
# The grid is three learning rates at 2,000 steps without L2: on this catalog L2 = 1e-3
# never won and 500 steps only once, so the larger grid spent two thirds of the time on
# points that were not picked.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"
steps="$2"

cat > "$out/suite.yaml" <<YAML
output: $out/probes
defaults: {seeds: 3, grid: "lr=1e-3,3e-3,1e-2,steps=2000,l2=0", warmup_steps: 50, bootstrap: 1000}
models:
  random-init: $out/embeddings-random
  pretrained: $out/embeddings
probes:
  - {dataset: Instrument, preset: NSynth_I, labels: $out/labels-probe.csv, label_column: instrument}
  - {dataset: Key, task: key, labels: $out/labels-probe.csv, label_column: key}
YAML
.venv/bin/musicrep probe-suite --config "$out/suite.yaml" 2>"$out/probes.log"

printf '\n=== %s\n' "what pre-training bought (test split: seed mean, 95 % bootstrap interval)"
.venv/bin/python - "$out/probes" "$steps" <<'PY'
import json, sys
root, steps = sys.argv[1], sys.argv[2]
suite = json.load(open(f"{root}/suite.json"))
for task, metric, name in (("Instrument", "accuracy", "accuracy, linear probe"),
                           ("Key", "mirex_key_score", "MIREX weighted accuracy, 1×512 MLP probe")):
    random, pretrained = suite["random-init"][f"{task}/{metric}"], suite["pretrained"][f"{task}/{metric}"]
    baseline = json.load(open(f"{root}/pretrained/{task}/report.json"))["diagnostics"]["baseline"][metric]
    widest = max((c["ci95"][1] - c["ci95"][0]) / 2 for c in (random, pretrained))
    print(f"{task} {name} (always guessing the commonest class: {baseline:.3f})")
    for label, cell in (("random-init", random), ("pretrained ", pretrained)):
        print(f"  {label} {cell['mean']:.3f}  [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]")
    print(f"  intervals ±{widest:.3f} at the widest ({'narrower' if widest < 0.1 else 'NOT narrower'} than ±0.1)")
    versus = pretrained["versus"]
    difference, (low, high) = versus["difference"], versus["ci95"]
    shown = f"{difference:+.3f} [{low:+.3f}, {high:+.3f}] (paired bootstrap: the same resampled test tracks for both)"
    if low > 0:
        print(f"  → pre-training helps: {shown}")
    elif high < 0:
        print(f"  → pre-training HURTS at {steps} steps: {shown}")
    else:
        print(f"  → no clear difference at {steps} steps: {shown} includes 0")
    if low <= 0:
        print("    (more pre-training, e.g. MUSICREP_DEMO_STEPS=200, gave larger gains in docs/demo.md's runs)")
PY
