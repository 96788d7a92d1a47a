#!/usr/bin/env bash
# One GPU lease for benchmarks/reproduce.py (docs/reproduce.md, "On a lent GPU"): students trained at once on
# one GPU and their long-context evaluation, on a machine that has no internet. What it needs travels in the
# repository's ignored folder .lease/ (see `prepare` below), at most 64 MiB per call of the device tool, so the
# 98 MB GGUF of SmolLM2 goes in two calls:
#
#   here:      bash benchmarks/lease.sh prepare            # .lease/part-a (GGUF half 1 + wheels), part-b (half 2),
#                                                          # part-c (the corpus)
#   call 1:    bash benchmarks/lease.sh stash  part-a      # (carry .lease/part-a) kept in /root/lease
#   call 1b:   bash benchmarks/lease.sh stash  part-c      # (carry .lease/part-c: with the ~9 MB working tree,
#                                                          # half 2 and the corpus no longer fit one call)
#   call 2:    bash benchmarks/lease.sh start part-b STUDENTS TIME_LIMIT_S [BASELINES [BENCH_S]]  # (carry part-b)
#   call 3..:  bash benchmarks/lease.sh wait SECONDS       # progress; when done, the results land in $OUT
#
#   A lease lost before its students finished (a machine taken back, a hold or budget spent) is continued in the
#   next one: every `wait` brings back each running student's newest checkpoint (runs/STUDENT/resume/, as a
#   student stopped at its time limit keeps it), and the students resume from there (`reproduce.py train --resume`):
#   here:      bash benchmarks/lease.sh salvage FILES_AT    # the last `wait`'s files -> .lease/part-d (or $3)
#   call 1c:   bash benchmarks/lease.sh stash  part-d      # (carry .lease/part-d) before `start`
#
#   (here, after the last commit and before call 1: `bash benchmarks/lease.sh stamp` writes the commit the carried
#   working tree is into .lease/wheels and part-b, for the reports' provenance: the device's copy of .git is stale)
#
# or, for the speed measures and the GPU tier alone (random SmolLM2-shaped weights, no GGUF, one call):
#   call 1:    bash benchmarks/lease.sh light .lease/wheels [BENCH_S]   # (carry .lease/wheels: the .whl files)
#   call 2..:  bash benchmarks/lease.sh wait SECONDS
#
# The background run (`pipeline`): the GPU test tier and the long-context measures of the teacher and the
# zero-training BASELINES (default teacher,swa:64:4; e.g. teacher,swa:64:4,swa:64:4:256) while `reproduce.py
# train` trains every student at once (one process each, TIME_LIMIT_S each: a student stopped there keeps its
# last checkpoint's adapter), then `reproduce.py longctx` of the students on the GPU, then, with BENCH_S > 0,
# `benchmarks/gpu_check.py --skip-tests --budget BENCH_S` alone on the GPU (the speed measures of docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
LEASE=${LEASE:-/root/lease}
CORPUS_ARCHIVE=${CORPUS_ARCHIVE:-$HOME/.cache/liger/repro-corpus.tar.xz}
GGUF=${GGUF:-$HOME/.cache/liger/gguf/SmolLM2-135M-Instruct.Q4_1.gguf}

benches() {  # the speed measures, alone on the GPU (nothing else runs then)
  [ "$(cat "$LEASE/bench_budget")" -gt 0 ] || return 0
  # (GPU_CHECK=0: the recipes' benches alone)
  [ "${GPU_CHECK:-1}" = 0 ] || python3 benchmarks/gpu_check.py --out "$LEASE/runs/gpu_check" --skip-tests \
    --budget "$(cat "$LEASE/bench_budget")" ${GPU_CHECK_ARGS:---skip-batch1 --serve-budget 150} \
    > "$LEASE/out/gpu_check.log" 2>&1 || true
  # SPLIT_RUNS: the fused decode step's program split at 32K (benchmarks/decode_split.py), one run per entry
  # RECIPE:SPLITS:WINDOW_SPLITS:KEY_BLOCKS[:KEY=VALUE,...], e.g. "memory:auto,1,2:auto,4:4096,2048 none:auto,2,8
  # memory:auto:auto:auto:global_cache_size=0" (the last: the recipe without its global cache, window512, the
  # control of issue 14's decode ratio); files decode_split_N_RECIPE.json, N the entry's place
  n=0
  for entry in ${SPLIT_RUNS:-}; do
    IFS=: read -r recipe splits wsplits blocks extra <<< "$entry"
    n=$((n + 1)) opts=()
    for kv in ${extra//,/ }; do opts+=(--option "$kv"); done
    python3 benchmarks/decode_split.py --recipe "$recipe" --splits "$splits" --window-splits "${wsplits:-auto}" \
      --key-blocks "${blocks:-auto}" "${opts[@]}" --output "$LEASE/runs/gpu_check/decode_split_${n}_$recipe.json" \
      > "$LEASE/out/decode_split_${n}_$recipe.log" 2>&1 || true
  done
  # the memory recipes' decode cost (issue 14): the same decode bench without and with their options (RECIPE_ARGS:
  # more bench flags, e.g. --profile; RECIPE_TRAIN: the training measure's flags, " " for none), RECIPE_S
  # (default 120 s) each (with 50 s, `plain` and `memory-triton` spent it compiling: run H of docs/gpu.md; with
  # fla's full autotuning, the default, `window-pool1024-triton` spent its 90 s before its first measure: run J)
  # A recipe written NAME@C1,C2 runs at those contexts instead (e.g. chunk-triton@2048 beside RECIPE_ARGS'
  # --context 32768), its files named bench_NAME_C1,C2.
  for spec in ${RECIPES:-plain memory memory-triton decode-triton}; do
    recipe=${spec%%@*} name=$spec contexts=()
    if [ "$spec" != "$recipe" ]; then name="${recipe}_${spec#*@}" contexts=(--context "${spec#*@}"); fi
    # (an unknown name is skipped: in a command substitution its `exit 2` would only end the subshell, and the
    # bench would run the plain recipe under its name)
    text=$(recipe_options "$recipe") || continue
    read -r -a opts <<< "$text"
    python3 -m liger bench --model random:smollm2 --device cuda --dtype bfloat16 --batch-size 16 --autotune fast \
      --context 2048,32768 --decode-steps 16 --prefill-repeats 1 --teachers gqa_graph --time-budget "${RECIPE_S:-120}" \
      ${RECIPE_TRAIN:---train --train-batch-sizes 8 --train-length 1024 --train-steps 6} \
      --output "$LEASE/runs/gpu_check/bench_$name.json" ${RECIPE_ARGS:-} "${contexts[@]}" "${opts[@]}" \
      > "$LEASE/out/bench_$name.log" 2>&1 || true
  done
}

light_tests() {  # the GPU tests of `light`
  # ${GPU_TESTS}: the tier's files to run (default: all of tests/gpu; "none": no tests, e.g.
  # when a `start` in the same lease runs the tier beside its training), one pytest process per entry: a kernel
  # that leaves an illegal address poisons its CUDA context, and in one process every later test failed with it
  # (run P)
  if [ "${GPU_TESTS:-}" != none ]; then
    : > "$LEASE/out/gpu_tests.log"
    for entry in ${GPU_TESTS:-tests/gpu}; do
      echo "== $entry" >> "$LEASE/out/gpu_tests.log"
      rc=0
      python3 -m pytest -q -p no:cacheprovider -m gpu "$entry" -rfE --durations=5 >> "$LEASE/out/gpu_tests.log" 2>&1 \
        || rc=$?
      echo "exit $rc ($entry)" >> "$LEASE/out/gpu_tests.log"
    done
  fi
}

record_gpu() {  # the device and the versions that measured, into $LEASE/out/gpu.txt
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LEASE/out/gpu.txt" || true
  python3 -c "import torch, transformers, triton, fla; print(torch.__version__, transformers.__version__, triton.__version__, fla.__version__)" \
    >> "$LEASE/out/gpu.txt" || true
}

recipe_options() {  # the liger_options of a bench recipe
  local fused="liger_options.decode_backend=triton"
  local window="liger_options.linear_weight=0 liger_options.window_weight=1 liger_options.num_sink_tokens=4"
  local memory="liger_options.global_cache_size=64 liger_options.num_sink_tokens=4 liger_options.linear_normalizer=sum"
  case "$1" in
    plain) echo "liger_options.decode_backend=torch" ;;  # Liger-GLA, the PyTorch decode step ("auto" is the fused one)
    decode-triton) echo "$fused" ;;  # Liger-GLA, the fused decode step (and decoder layers)
    decode-triton-nopdl) echo "$fused liger_options.decode_pdl=false" ;;  # the same in stream order (decode_pdl off)
    chunk-triton) echo "$fused liger_options.chunk_backend=triton" ;;  # and the grouped-query prefill kernel
    memory) echo "$memory liger_options.decode_backend=torch" ;;  # GLA + 64 global keys + 4 sinks, the PyTorch step
    memory-triton) echo "$memory liger_options.window_backend=triton $fused" ;;
    window-triton) echo "$window $fused" ;;  # window 64 + 4 sinks, no state: the control of the next two
    window-pool-triton) echo "$window liger_options.global_cache_size=256 liger_options.global_cache_pool=8 $fused" ;;
    window-pool1024-triton) echo "$window liger_options.global_cache_size=1024 liger_options.global_cache_pool=8 $fused" ;;
    # the `memory` recipe of liger/recipes.py (window 512 + 4 sinks + 512 pooled keys) and its control without the
    # global cache (issue 14: decode at 32K <= 1.2x the same model without the mechanism)
    window512-triton) echo "$window liger_options.window_size=512 $fused" ;;
    memory-recipe-triton) echo "$window liger_options.window_size=512 liger_options.global_cache_size=512 liger_options.global_cache_pool=8 $fused" ;;
    # the same two with the prefill's window on the Triton kernels ("auto" keeps SDPA blocks with sinks or a global
    # cache: run O's profiled 2K prefill of the recipe spent 130 of 344 ms of GPU time in copies of the blocks)
    window512-wtriton) echo "$window liger_options.window_size=512 liger_options.window_backend=triton $fused" ;;
    memory-recipe-wtriton) echo "$window liger_options.window_size=512 liger_options.global_cache_size=512 liger_options.global_cache_pool=8 liger_options.window_backend=triton $fused" ;;
    # Liger-GLA's decode with the residual adds and norms inside the projection kernels (five launches a layer;
    # off by default since run O)
    decode-triton-norms) echo "$fused liger_options.decode_fuse_norms=true" ;;
    # Liger-GLA's decode with programmatic dependent launch (decode_pdl: Hopper), and the memory recipe with it
    decode-triton-pdl) echo "$fused liger_options.decode_pdl=true" ;;
    memory-recipe-pdl) echo "$window liger_options.window_size=512 liger_options.global_cache_size=512 liger_options.global_cache_pool=8 $fused liger_options.decode_pdl=true" ;;
    *) echo "lease.sh: unknown bench recipe '$1' (skipped)" >&2; return 2 ;;
  esac
}

case "${1:-}" in
prepare)  # on the development machine: split what the lease needs into two carry folders
  # (a salvaged .lease/part-d, the kept checkpoints of a lease cut short, stays)
  rm -rf .lease/part-a .lease/part-b .lease/part-c .lease/wheels && mkdir -p .lease/part-a .lease/part-b .lease/part-c
  half=$(( ($(stat -c %s "$GGUF") + 1) / 2 ))
  head -c "$half" "$GGUF" > .lease/part-a/gguf.0
  tail -c +$((half + 1)) "$GGUF" > .lease/part-b/gguf.1
  cp .whl/*.whl .lease/part-a/
  cp "$CORPUS_ARCHIVE" .lease/part-c/corpus.tar.xz
  mkdir -p .lease/wheels && cp .whl/*.whl .lease/wheels/
  git rev-parse HEAD > .lease/wheels/COMMIT  # (`stamp` renews it: the device's copy of .git is stale)
  cp .lease/wheels/COMMIT .lease/part-b/COMMIT
  sha256sum "$GGUF" | cut -d' ' -f1 > .lease/part-b/gguf.sha256
  du -sh .lease/part-a .lease/part-b .lease/part-c
  ;;
stash)  # call 1: keep the first part on the device
  mkdir -p "$LEASE" && cp -r ".lease/$2/." "$LEASE/"
  ls -la "$LEASE"
  ;;
start)  # call 2: assemble, install, then the pipeline in the background (it outlives this call)
  cp -r ".lease/$2/." "$LEASE/"
  for f in gguf.0 gguf.1 corpus.tar.xz; do  # (what the earlier calls stashed)
    [ -f "$LEASE/$f" ] || { echo "lease.sh: $LEASE/$f is missing: stash part-a and part-c first" >&2; exit 2; }
  done
  mkdir -p "$LEASE/cache/gguf" "$LEASE/out"
  rm -f "$LEASE/out/done"  # (a `light` run earlier in the same lease left its own)
  cat "$LEASE/gguf.0" "$LEASE/gguf.1" > "$LEASE/cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
  echo "$(cat "$LEASE/gguf.sha256")  $LEASE/cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LEASE/site" \
    "$LEASE"/*.whl
  tar -xJf "$LEASE/corpus.tar.xz" -C "$LEASE"
  # (a salvaged lease: the students' kept checkpoints, runs/STUDENT/resume/, which `train --resume` continues)
  [ ! -f "$LEASE/resume.tar.gz" ] || tar -xzf "$LEASE/resume.tar.gz" -C "$LEASE"
  echo "$3" > "$LEASE/students" && echo "$4" > "$LEASE/time_limit"
  echo "${5:-teacher,swa:64:4}" > "$LEASE/baselines" && echo "${6:-0}" > "$LEASE/bench_budget"
  setsid nohup bash benchmarks/lease.sh pipeline > "$LEASE/out/pipeline.log" 2>&1 < /dev/null &
  sleep 60; tail -n 20 "$LEASE/out/pipeline.log"
  ;;
salvage)  # here: the kept checkpoints of a lost lease's students (from its last `wait`'s files in $2) -> part-d
  dest=${3:-.lease/part-d}
  tmp=$(mktemp -d)
  cat "$2"/runs.tar.gz.part-* | tar -xz -C "$tmp"
  kept=$(cd "$tmp" && ls -d runs/*/resume 2>/dev/null || true)
  [ -n "$kept" ] || { echo "lease.sh: no kept checkpoint (runs/STUDENT/resume) in $2" >&2; rm -rf "$tmp"; exit 2; }
  mkdir -p "$dest" && tar -czf "$dest/resume.tar.gz" -C "$tmp" $kept
  for run in $kept; do echo "$run: $(ls "$tmp/$run/checkpoints")"; done
  rm -rf "$tmp"; du -sh "$dest"
  ;;
stamp)  # here, before a lease's first call: the commit the carried working tree is, for the reports' provenance
  git rev-parse HEAD > .lease/wheels/COMMIT && cp .lease/wheels/COMMIT .lease/part-b/COMMIT 2>/dev/null || true
  cat .lease/wheels/COMMIT
  ;;
light)  # one call, no GGUF and no corpus (random weights): wheels from $2, the speed measures, then the GPU tier
  mkdir -p "$LEASE/out" "$LEASE/runs/gpu_check"
  [ ! -f "$2/COMMIT" ] || cp "$2/COMMIT" "$LEASE/commit"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LEASE/site" \
    "$2"/*.whl
  echo "${3:-380}" > "$LEASE/bench_budget"
  setsid nohup bash benchmarks/lease.sh light-pipeline > "$LEASE/out/pipeline.log" 2>&1 < /dev/null &
  sleep 20; tail -n 20 "$LEASE/out/pipeline.log"
  ;;
light-pipeline)  # the background run of `light`
  export PYTHONPATH="$LEASE/site:$PWD" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  [ ! -f "$LEASE/commit" ] || export LIGER_GIT_COMMIT="$(cat "$LEASE/commit")"  # (the reports' provenance)
  record_gpu
  # ${SMOKE_TESTS}: a few GPU tests first (seconds), so a broken kernel shows before the measures spend the lease
  [ -z "${SMOKE_TESTS:-}" ] || python3 -m pytest -q -p no:cacheprovider -m gpu $SMOKE_TESTS -x -rfE \
    > "$LEASE/out/smoke.log" 2>&1 || true
  # TESTS_FIRST=1: the GPU tests before the measures (the fixes they check matter more than the timings)
  [ -z "${TESTS_FIRST:-}" ] || light_tests
  benches
  [ -n "${TESTS_FIRST:-}" ] || light_tests
  touch "$LEASE/out/done"
  ;;
pipeline)  # the background run (started by `start`)
  export PYTHONPATH="$LEASE/site:$PWD" LIGER_CACHE="$LEASE/cache" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  [ ! -f "$LEASE/COMMIT" ] || export LIGER_GIT_COMMIT="$(cat "$LEASE/COMMIT")"  # (part-b's, from `stamp`)
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
  corpus=$(dirname "$(find "$LEASE" -maxdepth 3 -name manifest.json | head -1)")
  python3 -c "from liger.assets import smollm2_dir; print(smollm2_dir())"
  record_gpu
  # BENCH_FIRST=1: the speed measures first (alone on the GPU), then the tests, the training and the measures
  [ -n "${BENCH_FIRST:-}" ] && benches
  # ${GPU_TESTS}: the tier's files beside the training (default: all of tests/gpu, 19 min beside four students in
  # run O; "none": no tests)
  tests=
  if [ "${GPU_TESTS:-}" != none ]; then
    (python3 -m pytest -q -p no:cacheprovider -m gpu ${GPU_TESTS:-tests/gpu} -rfE --durations=10 \
       > "$LEASE/out/gpu_tests.log" 2>&1; echo "exit $?" >> "$LEASE/out/gpu_tests.log") &
    tests=$!
  fi
  students=$(cat "$LEASE/students")
  n=$(echo "$students" | tr ',' '\n' | grep -c .)
  # students at once: with train.cuda_graph (its private pool) a student held 15-26 GB on an H100 in run O (the
  # 4,096-token ones 21 and 26), and four at once ran the 80 GB card out of memory; 24 GiB each, PER_GPU overrides,
  # the rest wait their turn
  gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print int($1/1024)}')
  per_gpu=${PER_GPU:-$(( n < gib / 24 ? n : gib / 24 ))}
  [ "$per_gpu" -ge 1 ] || per_gpu=1
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  # the teacher's and the zero-training baseline's long-context measures need no student: alongside the training
  # (BASELINES "none": measured in an earlier lease, left out)
  baselines=
  if [ "$(cat "$LEASE/baselines")" != none ]; then
    timeout "${BASELINES_S:-900}" python3 benchmarks/reproduce.py longctx --corpus "$corpus" --runs "$LEASE/runs" \
      --models "$(cat "$LEASE/baselines")" --scratch "$LEASE/scratch" --output "$LEASE/runs/longctx-baselines.json" \
      --device cuda > "$LEASE/out/longctx-baselines.log" 2>&1 &
    baselines=$!
  fi
  # STUDENTS "none": the tests (and baselines) only
  [ "$students" = none ] || TOKENIZERS_PARALLELISM=true python3 benchmarks/reproduce.py train --corpus "$corpus" --students "$students" --gpus 1 --per-gpu "$per_gpu" \
    --out "$LEASE/runs" --scratch "$LEASE/scratch" --timeout "$(cat "$LEASE/time_limit")" --resume || true
  # at most LONGCTX_S (default 360 s) for the students' measures: each model's part is kept as it ends
  [ "$students" = none ] || timeout "${LONGCTX_S:-360}" python3 benchmarks/reproduce.py longctx --corpus "$corpus" --runs "$LEASE/runs" \
    --models "$students" --scratch "$LEASE/scratch" --output "$LEASE/runs/longctx-students.json" --device cuda \
    ${LONGCTX_ARGS:-} || true
  [ -z "$baselines" ] || wait "$baselines" || true
  [ -z "$tests" ] || wait "$tests" || true
  pkill -f "reproduce.py _longctx" || true
  [ -z "${BENCH_FIRST:-}" ] && benches
  touch "$LEASE/out/done"
  ;;
wait)  # call 3..: progress; what the runs folder holds now (summaries, adapters, measures) lands in $OUT
  end=$((SECONDS + ${2:-500}))
  while [ ! -f "$LEASE/out/done" ] && [ $SECONDS -lt $end ]; do sleep 15; done
  tail -n 25 "$LEASE/out/pipeline.log" || true
  for f in "$LEASE"/runs/*/summary.json; do [ -f "$f" ] && python3 -c "import json; s=json.load(open('$f')); \
print(s['student'], s.get('status'), s.get('steps'), s.get('final_val_loss'), s.get('tokens_per_s'))"; done || true
  tail -n 3 "$LEASE/out/smoke.log" "$LEASE/out/gpu_tests.log" 2>/dev/null || true
  if [ -n "${OUT:-}" ]; then
    cp "$LEASE/out/"*.txt "$LEASE/out/"*.log "$LEASE/runs/" 2>/dev/null || true
    # and each running student's newest checkpoint with its config and metrics, as runs/STUDENT/resume/ (what a
    # student stopped at its time limit keeps itself): if this machine is lost, the next lease continues from it
    # (each is copied first, then packed: a checkpoint rotated away while tar read it cost the archive its files,
    # 2026-12-07; a copy that fails so is taken again from the then newest one)
    stage="$LEASE/out/resume-stage"
    rm -rf "$stage"
    for run in "$LEASE"/scratch/runs/*/*/; do
      kept="$stage/runs/$(basename "$run")/resume"
      for _ in 1 2 3; do
        newest=$(ls -d "$run"checkpoints/step-* 2>/dev/null | sort | tail -n 1 || true)
        [ -n "$newest" ] && [ -f "$newest/state.pt" ] || break
        rm -rf "$kept" && mkdir -p "$kept/checkpoints"
        if cp -a "$newest" "$kept/checkpoints/" 2>/dev/null && [ -f "$kept/checkpoints/${newest##*/}/state.pt" ] \
            && cp "$run"config.yaml "$run"metrics.jsonl "$kept/" 2>/dev/null; then
          break
        fi
        rm -rf "$kept"
      done
    done
    staged=()
    [ -d "$stage/runs" ] && staged=(-C "$stage" runs)
    tar -czf "$LEASE/out/now.tar.gz" -C "$LEASE" --exclude "*.lock" runs "${staged[@]}" || true
    split -b 15m "$LEASE/out/now.tar.gz" "$OUT/runs.tar.gz.part-"
    size=$(stat -c %s "$LEASE/out/now.tar.gz")
    [ "$size" -le $((60 * 1024 * 1024)) ] || echo "lease: the archive is $((size / 1024 / 1024)) MiB, more than one" \
      "call brings back (64 MiB): its last parts will be left out; take them with another command" >&2
    ls -la "$OUT"
  fi
  ;;
*)
  echo "usage: bash benchmarks/lease.sh prepare | stamp | stash PART | start PART STUDENTS TIME_LIMIT_S [BASELINES" \
    "[BENCH_S]] | light WHEELS [BENCH_S] | wait SECONDS | salvage FILES_AT [DEST]" >&2
  exit 2
  ;;
esac
