#!/usr/bin/env bash
# GPU check of the trainer (issue 13): the device-selection tests, then a short bf16 hybrid run
# and a short bf16 MOO run of the tiny model on CUDA under torchrun (one process per GPU, at
# most 2), printing where each run trained, its step times, peak GPU memory, the orthogonality
# error of the rotations the forward pass applied (training.constraints.applied_orthogonality_error,
# logged by the trainer as orth_error_max) and what the MOO hook all-reduced.
#
#   bash bench/gpu_check.sh            # PYTHON=... to use another interpreter, OUT=... to keep runs
#
# Exit status: 0 when every check passed, 1 when one failed, 2 when there is no GPU.
# GPU_CHECK_ON_CPU=1 runs the same script on the CPU (to test the script itself: the GPU checks
# then fail by design).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

DEVICE=cuda
if [ "${GPU_CHECK_ON_CPU:-}" = 1 ]; then
    DEVICE=cpu
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: torch sees no CUDA device ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo 'torch not importable')):" >&2
    echo "gpu_check: nothing to check here. Run it on a GPU machine with a CUDA build of torch (README: PyTorch)." >&2
    exit 2
fi

if [ "$DEVICE" = cuda ]; then
    NGPU=$("$PY" -c 'import torch; print(min(2, torch.cuda.device_count()))')
    NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
else
    NGPU=1 NAME=CPU
fi
OUT=${OUT:-$(mktemp -d /tmp/govtune-gpu-check.XXXXXX)}
echo "gpu_check: $NGPU process(es) on $NAME, runs under $OUT"

echo "== device-selection tests"
"$PY" -m pytest -q tests/test_device.py

run() {  # name, then python -m training arguments
    local name=$1
    shift
    echo "== $name"
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m training \
        --model tiny --data synthetic --run-dir "$OUT/$name" --no-resume --no-progress \
        --set device="$DEVICE" --set dtype=bfloat16 --set log_every=5 --set checkpoint_every=20 \
        "$@"
}

run hybrid --method hybrid_unitary --steps 40 --batch-size 16 --set method.hybrid.block_size=16
run moo --method lora --moo mgda --steps 40 --batch-size 16 --set moo_scope=bucket \
    --set bucket_cap_mb=0.01

set +e
"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
failed = []


def check(ok: bool, what: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failed.append(what)


for name in ("hybrid", "moo"):
    run = out / name
    summary = json.loads((run / "summary.json").read_text())
    foot = summary["footprint"]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "step_time_s" in m]
    times = [m["step_time_s"] for m in logged[1:]] or [m["step_time_s"] for m in logged]
    print(f"{name}: device {foot['device']} x{foot['world_size']} ({foot.get('backend')}), "
          f"weights {foot['weights_dtype']}, autocast {foot['autocast_dtype']}")
    peak = foot["cuda_peak_mb"]
    print(f"  step time median {foot['step_time_s_median'] * 1e3:.1f} ms "
          f"(logged intervals: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms), "
          f"{foot['tokens_per_s'] or 0:.0f} tokens/s, "
          f"CUDA peak {'-' if peak is None else f'{peak:.0f}'} MB")
    print(f"  loss {logged[0]['loss']:.4f} -> {summary['final_loss']:.4f}")
    check(foot["device"].startswith("cuda:"), f"{name} trained on the GPU")
    check(foot["weights_dtype"] == "bfloat16", f"{name} kept the frozen weights in bf16")
    check(summary["final_loss"] == summary["final_loss"], f"{name} loss is finite")
    if name == "hybrid":
        err = summary["orth_error_max"]
        print(f"  orthogonality error of the applied rotations (max over layers): {err:.2e}")
        check(err < 1e-2, "hybrid_unitary rotations stay orthogonal in bf16 (< 1e-2)")
    else:
        moo = [m["moo"] for m in metrics if "moo" in m][-1]
        print(f"  moo: {moo['method']}/{moo['scope']}, {len(moo['groups'])} buckets, "
              f"gradients {moo['gradients']}, combined {moo['combined']}, world {moo['world_size']}, "
              f"{moo.get('bytes_allreduced', 0) / 1e6:.3f} MB all-reduced per step")
        check(len(moo["groups"]) > 1, "the MOO step solved more than one bucket")
        if foot["world_size"] > 1:
            check(moo["combined"] == "ddp-hook", "the DDP hook combined the language gradients")

sys.exit(1 if failed else 0)
EOF
status=$?
set -e
if [ "$status" -eq 0 ]; then
    echo "gpu_check: all checks passed"
else
    echo "gpu_check: some checks failed (see FAIL above)" >&2
fi
exit "$status"
