#!/usr/bin/env bash
# Runs the alert-latency part of bench/daemon.ts (--latency-only, the 0.5B shape) on a host without
# Node or node_modules, from what bench/lib/latency-bundle.sh packed into .lat/:
#
#   OUT=DIR bash bench/lib/latency-on-device.sh        (from the repository root)
#
# Unpacks Node and pkg/ into a temporary directory outside the checkout (no node_modules above it),
# writes the random Qwen2.5-0.5B checkpoint there (bench/random-checkpoint.ts: bf16, seed 0, ~1 GB),
# builds its int4 graph into a private cache (HOME is the temporary directory) and runs
#   node daemon.js --latency-only --model CKPT --out $OUT/daemon-latency-device.json
# then, if under REPLICAS_IF_BEFORE_S (330) seconds have passed, bench/replicas.ts (3 daemons on
# the carried nats-server, a random checkpoint of the built-in model's shape with the Qwen2.5
# vocabulary, LATENTWATCH_THREADS 5 per daemon: 16 cores for 3 engines), and if under
# ALERT_PATH_IF_BEFORE_S (440), bench/alert-path.ts for one round.
# Writes under $OUT: daemon-latency-device.{json,md} (the bench's report), replicas-device.{json,md}
# and daemon-alert-path-device.{json,md} (if they ran), log.txt (everything
# printed, with timings of each step), machine.txt (CPU, memory, load before and after).
# For a rehearsal on a small machine: CKPT_ARGS (extra random-checkpoint.js arguments, e.g. a tiny
# shape), BENCH_ARGS (extra daemon.js arguments, e.g. --quick), REPLICAS_ARGS (--quick),
# ALERT_PATH_ARGS (e.g. --tokens 5); WRITEBACK=1 runs bench/disk-writeback.ts first; SINGLE=1 runs
# bench/single-node.ts (SINGLE_ARGS, SINGLE_THREADS) before daemon.js; REPLICAS=0 or ALERT_PATH=0
# skip those steps; LATENCY=0 skips daemon.js; REPLICAS_MODEL=big runs the replicas on the 0.5B
# checkpoint instead of the small one.
set -uo pipefail
: "${OUT:?OUT must name the output directory}"
mkdir -p "$OUT"
LAT=${LAT_DIR:-$PWD/.lat}
WORK=$(mktemp -d /tmp/lw-latency.XXXXXX)
exec > >(tee -a "$OUT/log.txt") 2>&1
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
{ date -u; uname -a; nproc; grep -m1 'model name' /proc/cpuinfo; free -g | head -2; uptime; } > "$OUT/machine.txt" 2>&1
stamp "unpacking into $WORK"
mkdir -p "$WORK/bin"
if command -v xz >/dev/null; then
  xz -dc "$LAT/node.xz" > "$WORK/bin/node" && xz -dc "$LAT/nats-server.xz" > "$WORK/bin/nats-server" && tar -xJf "$LAT/pkg.tar.xz" -C "$WORK"
else
  python3 -c 'import lzma,sys,tarfile; [open(o,"wb").write(lzma.open(i).read()) for i,o in ((sys.argv[1],sys.argv[2]),(sys.argv[3],sys.argv[4]))]; tarfile.open(sys.argv[5],"r:xz").extractall(sys.argv[6])' "$LAT/node.xz" "$WORK/bin/node" "$LAT/nats-server.xz" "$WORK/bin/nats-server" "$LAT/pkg.tar.xz" "$WORK"
fi
chmod +x "$WORK/bin/node" "$WORK/bin/nats-server"
# The carried nats-server first (bench/lib/nats-server.ts looks on PATH before /usr/sbin).
export PATH="$WORK/bin:$PATH"
NODE="$WORK/bin/node"
stamp "node $("$NODE" --version)"
cd "$WORK/pkg"
export HOME="$WORK/home"
mkdir -p "$HOME"
if [ "${WRITEBACK:-0}" = 1 ]; then
  # Does a 4 KiB fdatasync wait for other files' unflushed writes on this disk? (bench/disk-writeback.ts)
  stamp "disk writeback probe"
  "$NODE" disk-writeback.js --mb 1024 --out "$OUT/disk-writeback-device.json"
fi
CKPT="$WORK/qwen2.5-0.5b-random"
stamp "random checkpoint"
# shellcheck disable=SC2086 # word splitting of the extra arguments is meant
"$NODE" random-checkpoint.js --out "$CKPT" ${CKPT_ARGS:-} || { stamp "random checkpoint failed"; exit 1; }
rc=0
if [ "${SINGLE:-0}" = 1 ]; then
  # One daemon, 100 subscribers, each alert log in turn, many requests (bench/single-node.ts); then
  # again with SINGLE_THREADS onnxruntime threads if set (the default is one per core).
  stamp "single node"
  # shellcheck disable=SC2086
  "$NODE" single-node.js --model "$CKPT" ${SINGLE_ARGS:-} --out "$OUT/single-node-device.json" --md "$OUT/single-node-device.md"
  stamp "single node exited $?"
  if [ -n "${SINGLE_THREADS:-}" ]; then
    # shellcheck disable=SC2086
    LATENTWATCH_THREADS=$SINGLE_THREADS "$NODE" single-node.js --model "$CKPT" ${SINGLE_ARGS:-} --out "$OUT/single-node-threads-device.json" --md "$OUT/single-node-threads-device.md"
    stamp "single node ($SINGLE_THREADS threads) exited $?"
  fi
fi
if [ "${LATENCY:-1}" = 1 ]; then
  stamp "bench (the first start builds and quantizes the graph)"
  # shellcheck disable=SC2086
  "$NODE" daemon.js --latency-only --model "$CKPT" ${BENCH_ARGS:-} --out "$OUT/daemon-latency-device.json" --md "$OUT/daemon-latency-device.md"
  rc=$?
  stamp "bench exited $rc"
fi
# Then, if the call has time left (SECONDS counts from the start), several replicas on one NATS
# JetStream stream against one node (the cross-replica goal) on a small random checkpoint.
if [ "${REPLICAS:-1}" = 1 ] && [ "$SECONDS" -lt "${REPLICAS_IF_BEFORE_S:-330}" ]; then
  if [ "${REPLICAS_MODEL:-small}" = big ]; then SMALL="$CKPT"; else
    stamp "replicas: random checkpoint of the built-in shape"
    SMALL="$WORK/qwen2-16m-shape-random"
    # shellcheck disable=SC2086
    "$NODE" random-checkpoint.js --out "$SMALL" --hidden 384 --layers 8 --heads 6 --kv-heads 2 --intermediate 1024 --max-positions 1024 ${SMALL_CKPT_ARGS:-} >/dev/null
  fi
  stamp "replicas on $(basename "$SMALL")"
  # shellcheck disable=SC2086
  LATENTWATCH_THREADS=${REPLICA_THREADS:-5} "$NODE" replicas.js --model "$SMALL" ${REPLICAS_ARGS:-} --out "$OUT/replicas-device.json" --md "$OUT/replicas-device.md"
  stamp "replicas exited $?"
else
  stamp "replicas skipped (REPLICAS=${REPLICAS:-1}, ${SECONDS} s elapsed)"
fi
# Then, if the call has time left, the alert path without a model
# (bench/alert-path.ts: the group-commit worker vs FULL on the event loop vs NORMAL + fdatasync of
# the WAL on the libuv pool, with and without a 40 ms synchronous pass), one round.
if [ "${ALERT_PATH:-1}" = 1 ] && [ "$SECONDS" -lt "${ALERT_PATH_IF_BEFORE_S:-440}" ]; then
  stamp "alert path"
  # shellcheck disable=SC2086
  "$NODE" alert-path.js --rounds 1 --stores groupFull,inlineFull,poolSync,memory ${ALERT_PATH_ARGS:-} --out "$OUT/daemon-alert-path-device.json" --md "$OUT/daemon-alert-path-device.md"
  stamp "alert path exited $?"
else
  stamp "alert path skipped (ALERT_PATH=${ALERT_PATH:-1}, ${SECONDS} s elapsed)"
fi
uptime >> "$OUT/machine.txt"
rm -rf "$WORK"
exit $rc
