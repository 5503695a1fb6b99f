#!/usr/bin/env bash
# One prepared GPU check (issue 17): the plain torchvision SwAV step vs seer's step, in the same run,
# on rg32gf and rg128gf (rg256gf with --with-256), with what a plain loop lacks: channels-last, fused
# LARC, bf16 and fp16, regional torch.compile of the RegNet blocks. Prints bench/train_step.py's tables
# (img/s, TFLOP/s, MFU vs a matmul measured in the same run, peak memory, per-round ratios) and writes
# its JSON to $OUT (or bench/results/).
#
#   bench/gpu_check.sh                                   # on the GPU machine
#   bench/gpu_check.sh --device cpu --preset rg-tiny     # the same script end to end on CPU (tiny)
#
# Flags: --device cpu|auto, --preset NAME[:BATCH] (repeatable; replaces the default presets),
# --with-256 (adds rg256gf:16), --python PATH, --steps N, --repeats N, --quick (skips the compile
# variants: each compiles one graph per block and crop size, minutes on a big trunk).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3
device=auto
presets=()
with256=0
quick=0
steps=6
repeats=3
while (($#)); do
  case $1 in
    --device) device=$2; shift 2 ;;
    --preset) presets+=("$2"); shift 2 ;;
    --with-256) with256=1; shift ;;
    --python) python=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "gpu_check.sh: unknown flag $1 (see the header of bench/gpu_check.sh)" >&2; exit 2 ;;
  esac
done

if ((${#presets[@]} == 0)); then
  if [[ $device == cpu ]]; then presets=(rg-tiny:16); else presets=(rg32gf:32 rg128gf:16); fi
  ((with256)) && presets+=(rg256gf:16)
fi
variants=(baseline seer "seer fp16")
[[ $device != cpu ]] && variants=(baseline baseline+cudnn.benchmark seer "seer fp16" "seer+act-ckpt")
((quick)) || variants+=(seer+compile)
out_dir=${OUT:-bench/results}
mkdir -p "$out_dir"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[[ $device == cpu ]] && export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
for preset in "${presets[@]}"; do  # one process per preset: a failure or OOM in one leaves the others' numbers
  name=${preset%%:*}
  echo "=== $preset: ${variants[*]}"
  "$python" bench/train_step.py --device "$device" --presets "$preset" --variants "${variants[@]}" \
    --steps "$steps" --repeats "$repeats" --warmup 3 --profile --profile-steps 3 \
    --out "$out_dir/gpu_check_${device}_${name}.json" 2>&1 | grep -v -e '^USDT' -e 'gpuGetDeviceCount' \
    || echo "=== $preset failed (exit ${PIPESTATUS[0]})"
done
