#!/usr/bin/env bash
# The GPU checks of the "scale out and speed up" issue, as one script for a machine with a CUDA
# GPU and a torch 2.11 (CUDA) environment but no Rust toolchain. `cargo xtask device-bench`
# builds target/device-bench/bin/cappa here and prints how to run this there (carry the binary).
#
# 1. `cappa info` on the GPU (bf16, Gloo/NCCL in this build);
# 2. NCCL smoke test: a short data-parallel training run through `cappa launch` on the GPU;
# 3. CLIP and CapPa B/16 trainer steps in bf16 on synthetic batches at the largest batch (of
#    $BATCHES) that fits: samples/s and MFU against the device's peak (989 TFLOP/s on H100/H200);
# 4. the same steps in PyTorch eager (scripts/bench_train_reference.py) at the same batch, for
#    the ratio; 5. a table of both, also written to $OUT/device-bench.md.
#
# Settings (environment): TORCH_VENV (/opt/torch/.venv), OUT (target/device-bench), DEVICE
# (cuda), PRESET (b16), PRECISION (bf16), BATCHES ("1024 768 512 384 256 128 64"), STEPS (20).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCH_VENV:-/opt/torch/.venv}
PY=$VENV/bin/python
OUT=${OUT:-target/device-bench}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-b16}
PRECISION=${PRECISION:-bf16}
BATCHES=${BATCHES:-"1024 768 512 384 256 128 64"}
STEPS=${STEPS:-20}
SEQ_LEN=${SEQ_LEN:-64}
CAPPA=${CAPPA:-target/device-bench/bin/cappa}
mkdir -p "$OUT"
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CAPPA_DIST_TIMEOUT_S=120

echo "== cappa info"
"$CAPPA" --device "$DEVICE" info

echo "== data parallel smoke test (cappa launch, 1 rank on $DEVICE)"
rm -rf "$OUT/launch-run"
"$CAPPA" --device "$DEVICE" launch --nproc 1 train --progress plain --out "$OUT/launch-run" \
  --set objective=clip --set budget.steps=20 --set log_every=10 --set precision="$PRECISION" \
  || echo "launch smoke test FAILED"

declare -A BATCH
for objective in clip cap_pa; do
  echo "== cappa $objective: largest batch of ($BATCHES) that fits"
  for b in $BATCHES; do
    if "$CAPPA" --device "$DEVICE" bench throughput --preset "$PRESET" --precision "$PRECISION" \
        --seq-len "$SEQ_LEN" --batch "$b" --steps "$STEPS" --objectives "$objective" \
        --json "$OUT/cappa-$objective.json" 2> "$OUT/cappa-$objective-$b.err"; then
      BATCH[$objective]=$b
      break
    fi
    echo "batch $b: $(grep -m1 -o 'out of memory' "$OUT/cappa-$objective-$b.err" || tail -n1 "$OUT/cappa-$objective-$b.err")"
  done
done

for objective in clip cap_pa; do
  b=${BATCH[$objective]:-}
  [ -z "$b" ] && { echo "no batch fitted for $objective"; continue; }
  ref=$([ "$objective" = clip ] && echo clip || echo cappa)
  read -r vocab flops < <("$PY" -c "import json,sys; d=json.load(open('$OUT/cappa-$objective.json')); print(d['vocab'], d['results']['$objective']['train_flops_per_example'])")
  echo "== PyTorch eager $objective, batch $b"
  "$PY" scripts/bench_train_reference.py --preset "$PRESET" --device "$DEVICE" \
    --precision "$PRECISION" --batch "$b" --seq-len "$SEQ_LEN" --vocab "$vocab" --steps "$STEPS" \
    --warmup 5 --only "$ref" --flops-per-example "$ref=$flops" \
    --json "$OUT/torch-$objective.json" || echo "PyTorch $objective FAILED"
done

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| model | batch | cappa samples/s | PyTorch samples/s | ratio | cappa MFU | PyTorch MFU | target MFU ≥ 45 % |",
        "|---|---:|---:|---:|---:|---:|---:|---|"]
for objective, ref in (("clip", "clip"), ("cap_pa", "cappa")):
    try:
        ours = json.loads((out / f"cappa-{objective}.json").read_text())
        r = ours["results"][objective]
    except (OSError, KeyError):
        rows.append(f"| {objective} | – | failed | | | | | |")
        continue
    try:
        theirs = json.loads((out / f"torch-{objective}.json").read_text())
        t_sps, t_mfu = theirs[f"{ref}_samples_per_s"], theirs.get(f"{ref}_mfu")
    except (OSError, KeyError):
        t_sps, t_mfu = float("nan"), None
    mfu = r["mfu"]
    fmt = lambda m: "n/a" if m is None else f"{100 * m:.1f} %"
    met = "n/a" if mfu is None else ("met" if mfu >= 0.45 else "NOT met")
    rows.append(f"| {objective} {ours['preset']} {ours['precision']} | {ours['batch']} | "
                f"{r['samples_per_s']:.1f} | {t_sps:.1f} | {r['samples_per_s'] / t_sps:.2f} | "
                f"{fmt(mfu)} | {fmt(t_mfu)} | {met} |")
table = "\n".join(rows)
print(table)
(out / "device-bench.md").write_text(table + "\n")
PYEOF
