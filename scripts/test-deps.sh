#!/usr/bin/env bash
# Installs the system tools the tests run for real (they never skip without them), from Debian's
# packages. Used by `npm test` (vitest globalSetup, test/global-setup.ts) and by .ci/run.
#   root, something missing:      apt-get update (when the package lists lack it), then apt-get install
#   not root, something missing:  exit 1 naming the packages and the command to install them
#   everything present:           one line, installs nothing
# Add a tool: one line in REQUIREMENTS below ("check package why"); check is a command on PATH, or an
# absolute path/glob that must match a file (for things that are not commands, e.g. a Vulkan ICD).
# A package spelled package/suite (e.g. mesa-vulkan-drivers/bookworm-backports) comes from that Debian
# suite: the script adds the suite to apt's sources when it is not there, and installs with -t suite.
set -euo pipefail

REQUIREMENTS=(
  "prometheus prometheus test/prometheus.test.ts scrapes the real daemon"
  "promtool prometheus test/deploy.test.ts checks and unit-tests the alert rules"
  "amtool prometheus-alertmanager test/deploy.test.ts checks deploy/alertmanager config and routes"
  "/usr/sbin/nats-server nats-server test/nats-replicas.test.ts runs 3 daemons on one JetStream stream"
  # Mesa's CPU Vulkan driver (lavapipe): a real WebGPU device for onnxruntime's WebGPU provider without
  # a GPU. bookworm's Mesa 22.3 lacks a feature Dawn requires; backports' Mesa 25 has it (docs/gpu.md).
  "/usr/share/vulkan/icd.d/lvp_icd*.json mesa-vulkan-drivers/bookworm-backports test/engine-webgpu.test.ts runs the engine on the WebGPU provider"
  # A C compiler: test/engine-webgpu-no-f16.test.ts builds a Vulkan driver over lavapipe without fp16 shaders.
  "cc gcc test/engine-webgpu-no-f16.test.ts compiles test/fixtures/vulkan-no-f16/icd.c"
  "/usr/include/dlfcn.h libc6-dev test/engine-webgpu-no-f16.test.ts compiles test/fixtures/vulkan-no-f16/icd.c"
)

present() {
  local check=$1
  if [[ $check == /* ]]; then compgen -G "$check" >/dev/null; else command -v "$check" >/dev/null 2>&1; fi
}

missing_checks=()
missing_pkgs=()
for line in "${REQUIREMENTS[@]}"; do
  read -r check pkg why <<<"$line"
  if ! present "$check"; then
    missing_checks+=("$check")
    [[ " ${missing_pkgs[*]-} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  fi
done

all_checks=$(for line in "${REQUIREMENTS[@]}"; do read -r c _ <<<"$line"; printf '%s ' "$c"; done)
if [ ${#missing_pkgs[@]} -eq 0 ]; then
  echo "test-deps: all present (${all_checks% })"
  exit 0
fi

fail() {
  echo "test-deps: ERROR: $1" >&2
  echo "test-deps: missing ${missing_checks[*]}; install the Debian packages: ${missing_pkgs[*]}" >&2
  echo "test-deps:   as root: apt-get update && apt-get install -y --no-install-recommends ${missing_pkgs[*]}" >&2
  echo "test-deps:   (package/suite: add 'deb http://deb.debian.org/debian suite main' to apt's sources, install with -t suite)" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || fail "not root, so cannot install the packages the tests need"
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine (the tests expect Debian bookworm packages)"

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg (e.g. a second test run starting at the same time) instead of failing.
APT=(apt-get -q -o DPkg::Lock::Timeout=300)

# Suites named by package/suite lines go into apt's sources once (a file of their own).
need_update=0
for pkg in "${missing_pkgs[@]}"; do
  [[ $pkg == */* ]] || continue
  suite=${pkg#*/}
  if ! grep -rqsE "^(deb .* |Suites:.*[[:space:]])${suite}([[:space:]]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian ${suite} main" >"/etc/apt/sources.list.d/${suite}.list"
    need_update=1
  fi
done

# A fresh image has no package lists: update only when one of the packages has no install candidate.
for pkg in "${missing_pkgs[@]}"; do
  if ! apt-cache policy "${pkg%%/*}" 2>/dev/null | grep -q 'Candidate: [^(]'; then need_update=1; fi
done
if [ $need_update -eq 1 ]; then
  echo "test-deps: apt-get update"
  "${APT[@]}" update >/dev/null || fail "apt-get update failed"
fi

echo "test-deps: installing ${missing_pkgs[*]} (for ${missing_checks[*]})"
t0=$(date +%s)
plain=()
for pkg in "${missing_pkgs[@]}"; do [[ $pkg == */* ]] || plain+=("$pkg"); done
if [ ${#plain[@]} -gt 0 ]; then "${APT[@]}" install -y --no-install-recommends "${plain[@]}" >/dev/null || fail "apt-get install failed"; fi
# One install per suite, -t so that the package's dependencies may come from that suite too.
for pkg in "${missing_pkgs[@]}"; do
  [[ $pkg == */* ]] || continue
  "${APT[@]}" install -y --no-install-recommends -t "${pkg#*/}" "${pkg%%/*}" >/dev/null || fail "apt-get install -t ${pkg#*/} ${pkg%%/*} failed"
done

for c in "${missing_checks[@]}"; do
  present "$c" || fail "installed ${missing_pkgs[*]} but $c is still missing"
done
echo "test-deps: installed ${missing_pkgs[*]} in $(( $(date +%s) - t0 ))s"
