#!/usr/bin/env bash
# Runs tinylm's test suite on emulated Raspberry Pi CPUs: builds the aarch64 wheel with
# the package's own setup.py inside an arm64 CPython running under qemu user-mode
# emulation, installs it, and runs pytest as cortex-a72 (Pi 4), cortex-a76 (Pi 5) and max.
#
#   bash tests/arm/run.sh                   everything (root: installs Debian packages)
#   TINYLM_ARM_CPUS="cortex-a72" bash tests/arm/run.sh
#   bash tests/arm/run.sh -k attention      extra arguments go to pytest
#   TINYLM_ARM_WHEEL_DIR=dist bash tests/arm/run.sh   also keep the aarch64 wheel
#
# Emulation is ~20x slower than the host, so tests marked `slow` are deselected
# (TINYLM_ARM_PYTEST_ARGS replaces the default '-m "not slow"'), and TINYLM_TEST_EMULATED=1
# is set so that tests (and a hypothesis profile) can shrink their case counts.
#
# No binfmt_misc is needed: a launcher script runs the arm64 python under qemu-aarch64 and
# is itself sys.executable, so subprocesses and pip's build backend re-enter emulation.
# The arm64 userland (python3.11 from Debian's arm64 packages, unpacked, never installed
# into the host's dpkg) and the third-party arm64 wheels are cached in
# $TINYLM_ARM_CACHE (default ~/.cache/tinylm-arm) between local runs.
#
# tests/test_cross_machine.py compares each emulated CPU with this host: the host's
# tinylm (installed, or this checkout's in-place build; TINYLM_HOST_PYTHON picks the
# interpreter) first writes a reference model, its logits and greedy text
# (tests/arm/make_reference.py), passed on as TINYLM_ARM_REFERENCE, with the path each CPU
# must choose as TINYLM_ARM_EXPECT_ISA.
#
# The native C++ kernel tests (tests/test_native_driver.py) are not run here: they
# cross-compile on the host and already run the kernels under qemu; here the Python
# package itself runs on ARM.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${TINYLM_ARM_CACHE:-$HOME/.cache/tinylm-arm}"
CPUS="${TINYLM_ARM_CPUS:-cortex-a72 cortex-a76 max}"
PYVER=3.11
ROOTFS="$CACHE/rootfs"
SITE="$CACHE/site"
LAUNCHER="$CACHE/python3"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tinylm-arm.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Third-party packages the tests need on the target (the package's and its [test] extra's).
WHEELS=(numpy pytest hypothesis safetensors sentencepiece pybind11 setuptools wheel pip)

step() { echo; echo "=== arm: $* ($((SECONDS))s)"; }

# --------------------------------------------------------------------------- host tools
step "host packages"
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --------------------------------------------------------------------------- arm64 userland
# A private apt configuration for arm64, so the host's own package state is untouched.
# .complete is written last, so an interrupted unpack is redone rather than half-used.
if [[ ! -f "$ROOTFS/.complete" || ! -x "$ROOTFS/usr/bin/python$PYVER" ]]; then
  step "arm64 CPython userland -> $ROOTFS"
  APTDIR="$CACHE/apt"
  rm -rf "$APTDIR" "$ROOTFS"
  mkdir -p "$APTDIR"/{state/lists/partial,cache/archives/partial,sources.list.d,debs} "$ROOTFS"
  touch "$APTDIR/status"
  # The machine's own mirrors and suites, restricted to arm64.
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed 's/^Types: deb$/Types: deb\nArchitectures: arm64/' /etc/apt/sources.list.d/debian.sources \
      > "$APTDIR/sources.list.d/debian.sources"
  else
    cat > "$APTDIR/sources.list.d/debian.sources" <<EOF
Types: deb
Architectures: arm64
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  cat > "$APTDIR/apt.conf" <<EOF
Dir::State "$APTDIR/state";
Dir::State::status "$APTDIR/status";
Dir::Cache "$APTDIR/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APTDIR/sources.list.d";
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Sandbox::User "root";
EOF
  export APT_CONFIG="$APTDIR/apt.conf"
  apt-get update -qq
  # python3.11 and its closure; libstdc++6 is not in it but every C++ extension needs it.
  apt-get install -y -qq --download-only --no-install-recommends "python$PYVER" libstdc++6 >/dev/null
  (cd "$APTDIR/debs" && apt-get download -qq "libpython$PYVER-dev" "python$PYVER-dev" >/dev/null)
  for deb in "$APTDIR"/cache/archives/*.deb "$APTDIR"/debs/*.deb; do
    dpkg -x "$deb" "$ROOTFS"
  done
  unset APT_CONFIG
  rm -rf "$APTDIR/cache/archives" "$APTDIR/debs"
  touch "$ROOTFS/.complete"
  echo "unpacked $(du -sh "$ROOTFS" | cut -f1)"
fi

# The launcher is sys.executable under emulation. QEMU_CPU chooses the CPU model.
cat > "$LAUNCHER" <<EOF
#!/bin/sh
exec qemu-aarch64 -L "$ROOTFS" -0 "\$0" "$ROOTFS/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$LAUNCHER"

# --------------------------------------------------------------------------- arm64 wheels
# Resolved on the host for the target. Both platform tags: with only the 2014 tag pip
# silently picks an old numpy.
if [[ ! -f "$SITE/.complete" || "$(cat "$SITE/.complete")" != "${WHEELS[*]}" ]]; then
  step "arm64 wheels -> $SITE"
  rm -rf "$SITE"
  python3 -m pip install -q --target "$SITE" --platform manylinux_2_28_aarch64 \
    --platform manylinux2014_aarch64 --python-version "$PYVER" --implementation cp \
    --abi "cp${PYVER/./}" --only-binary=:all: "${WHEELS[@]}"
  echo "${WHEELS[*]}" > "$SITE/.complete"
fi

# --------------------------------------------------------------------------- the wheel
step "build tinylm's aarch64 wheel (setup.py, cross compiler, under emulation)"
# The arm64 sysconfig names aarch64-linux-gnu-gcc/g++: the host's cross compiler, which
# runs natively. setuptools passes CPPFLAGS (not CFLAGS) to C++.
# Built from a copy, so that the checkout gets no build/ or *.egg-info from another arch.
mkdir -p "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
  | (cd "$REPO" && xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true)
CPPFLAGS="-I$ROOTFS/usr/include/python$PYVER -idirafter $ROOTFS/usr/include" \
  PYTHONPATH="$SITE" QEMU_CPU=max "$LAUNCHER" -m pip wheel -q --no-build-isolation --no-deps \
  -w "$WORK/dist" "$WORK/src"
PYTHONPATH="$SITE" "$LAUNCHER" -m pip install -q --root-user-action=ignore --no-deps --no-index --target "$WORK/inst" \
  "$WORK"/dist/*.whl
ls "$WORK"/dist
# TINYLM_ARM_WHEEL_DIR keeps the wheel (e.g. to copy it to a Pi running 64-bit Raspberry
# Pi OS bookworm, whose glibc and python3.11 are the ones it was built against).
if [[ -n "${TINYLM_ARM_WHEEL_DIR:-}" ]]; then
  mkdir -p "$TINYLM_ARM_WHEEL_DIR" && cp "$WORK"/dist/*.whl "$TINYLM_ARM_WHEEL_DIR"/
fi

# --------------------------------------------------------------------------- x86 reference
# tests/test_cross_machine.py compares each emulated CPU's logits and greedy text with the
# host's, for the same model file: the host's tinylm writes them here first. That is the
# installed package (CI: `pip install .`) or, failing that, this checkout's in-place build.
step "x86 reference (tests/arm/make_reference.py)"
HOST_PY="${TINYLM_HOST_PYTHON:-python3}"
host_env=()
if ! (cd / && "$HOST_PY" -c 'import tinylm._C' 2>/dev/null); then
  if (cd / && PYTHONPATH="$REPO" "$HOST_PY" -c 'import tinylm._C' 2>/dev/null); then
    host_env=(PYTHONPATH="$REPO")
  else
    echo "the host's $HOST_PY cannot import tinylm._C: pip install . (or python setup.py" \
         "build_ext --inplace) first, or set TINYLM_HOST_PYTHON" >&2
    exit 1
  fi
fi
(cd / && env "${host_env[@]}" "$HOST_PY" "$REPO/tests/arm/make_reference.py" "$WORK/reference")

# --------------------------------------------------------------------------- tests
if [[ -n "${TINYLM_ARM_PYTEST_ARGS+set}" ]]; then
  read -r -a PYTEST_ARGS <<<"$TINYLM_ARM_PYTEST_ARGS"
else
  PYTEST_ARGS=(-m "not slow")
fi
failed=()
for cpu in $CPUS; do
  case "$cpu" in
    cortex-a53|cortex-a72) expect=neon ;;
    cortex-a76) expect=neon_dotprod ;;
    max) expect=neon_i8mm ;;
    *) expect="" ;;
  esac
  step "QEMU_CPU=$cpu"
  # From / so that `import tinylm` can only find the installed wheel.
  export QEMU_CPU="$cpu" PYTHONPATH="$WORK/inst:$SITE" TINYLM_TEST_EMULATED=1 \
    TINYLM_ARM_REFERENCE="$WORK/reference" TINYLM_ARM_EXPECT_ISA="$expect"
  active="$(cd / && "$LAUNCHER" -c 'import tinylm._C as C; print(C.active_isa())')"
  echo "tinylm._C chose: $active"
  if [[ -n "$expect" && "$active" != "$expect" ]]; then
    echo "expected $expect on $cpu" >&2
    failed+=("$cpu: isa $active")
  fi
  status=0
  (cd / && "$LAUNCHER" -m pytest -q -p no:cacheprovider -c "$REPO/pyproject.toml" \
     --rootdir "$REPO" "$REPO/tests" --ignore="$REPO/tests/test_native_driver.py" \
     --ignore="$REPO/tests/arm" "${PYTEST_ARGS[@]}" "$@") || status=$?
  if ((status != 0)); then
    ((status == 5)) && echo "pytest collected no tests on $cpu" >&2
    failed+=("$cpu: pytest exit $status")
  fi
  unset QEMU_CPU PYTHONPATH TINYLM_TEST_EMULATED TINYLM_ARM_REFERENCE TINYLM_ARM_EXPECT_ISA
done

if ((${#failed[@]})); then
  echo "=== arm: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "=== arm: passed on $CPUS ($((SECONDS))s)"
