#!/usr/bin/env bash
# Runs tinylm's test suite on emulated Raspberry Pi CPUs: builds tinylm's wheel with the
# package's own setup.py inside an ARM CPython running under qemu user-mode emulation,
# installs it, and runs pytest on each emulated CPU.
#
#   bash tests/arm/run.sh                   arm64 (64-bit Raspberry Pi OS): the suite as
#                                           cortex-a76 (Pi 5), its kernel tests as max,
#                                           `tinylm info` as cortex-a72 (Pi 4)
#   TINYLM_ARM_ARCH=armhf bash tests/arm/run.sh
#                                           armhf (32-bit, ARMv7): the suite as cortex-a7
#                                           (Pi 2), `tinylm info` as cortex-a15
#   TINYLM_ARM_CPUS="cortex-a72" bash tests/arm/run.sh        the suite on these CPUs
#   TINYLM_ARM_KERNEL_CPUS="max" bash tests/arm/run.sh        the kernel tests on these
#   TINYLM_ARM_JOBS=1 bash tests/arm/run.sh                    one CPU's run at a time
#                                           (default: as many side by side as cores)
#   TINYLM_ARM_INFO_CPUS="cortex-a53" bash tests/arm/run.sh   only `tinylm info` on these
#   bash tests/arm/run.sh -k attention      extra arguments go to every pytest run (a
#                                           kernel-tests run they select nothing from
#                                           passes, saying so)
#   TINYLM_ARM_WHEEL_DIR=dist bash tests/arm/run.sh   also keep the wheel
#
# Emulation is ~20x slower than the host (more on 32-bit ARM), so tests marked `slow`
# are deselected, as are those marked `native`, whose limits on a process of their own
# qemu-user would apply to the emulator (TINYLM_ARM_PYTEST_ARGS replaces the default
# '-m "not slow and not native"'), and
# TINYLM_TEST_EMULATED=1 is set so that tests (and a hypothesis profile) can shrink their
# case counts. For the same reason the whole suite runs on one CPU per architecture, and
# the other CPUs run only the tests whose code takes another path there (KERNEL_TESTS:
# the kernels, each tried on every path the CPU has, and the engine against x86), or
# only `tinylm info`, to check the path the CPU is given: `max` has every path of
# AArch64 (neon, dotprod, i8mm) and the kernel tests try each, so a Pi 4's cortex-a72
# (neon alone) needs no kernel run of its own (it took 186 s of CI's emulated runs).
#
# No binfmt_misc is needed: a launcher script runs the ARM python under qemu-aarch64 or
# qemu-arm and is itself sys.executable, so subprocesses and pip's build backend re-enter
# emulation. The userland (python3.11 from Debian's packages for the architecture,
# unpacked, never installed into the host's dpkg) and the third-party packages are cached
# in $TINYLM_ARM_CACHE/<arch> (default ~/.cache/tinylm-arm) between runs.
#
# Third-party packages: arm64 takes PyPI's manylinux wheels. PyPI has no armv7 wheels of
# numpy, sentencepiece or safetensors, so armhf takes numpy (1.24) and sentencepiece
# (0.1.97) from Debian bookworm, like a Raspberry Pi OS user's `apt install python3-numpy`;
# Debian has no safetensors, so the tests that compare with that package skip there.
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
ARCH="${TINYLM_ARM_ARCH:-arm64}"
PYVER=3.11
# Pure-Python packages the tests and the build need, the same wheel on every architecture.
PURE_WHEELS=(pytest hypothesis pybind11 "setuptools>=77" wheel pip)  # 77: pyproject's license

# --------------------------------------------------------------------------- architectures
# QEMU runs the userland; TRIPLET names Debian's multiarch directories and the cross
# compiler (the target's sysconfig names $TRIPLET-gcc/g++); BUILD_CPU runs pip while the
# wheel builds; DEBS are Debian packages unpacked beside python (libstdc++6 is not in
# python's closure but every C++ extension needs it); WHEELS come from PyPI for
# PIP_PLATFORMS (both manylinux tags: with only the 2014 tag pip silently picks an old
# numpy).
case "$ARCH" in
  arm64)
    QEMU=qemu-aarch64 TRIPLET=aarch64-linux-gnu BUILD_CPU=max
    DEFAULT_CPUS="cortex-a76" DEFAULT_KERNEL_CPUS="max" DEFAULT_INFO_CPUS="cortex-a72"
    DEBS=("python$PYVER" libstdc++6)
    WHEELS=(numpy safetensors sentencepiece "${PURE_WHEELS[@]}")
    PIP_PLATFORMS=(manylinux_2_28_aarch64 manylinux2014_aarch64)
    ;;
  armhf)
    # cortex-a7 (Raspberry Pi 2) runs the whole suite, cortex-a15 only `tinylm info`:
    # emulated 32-bit ARM is slow, and both run the same code. `max` would add nothing:
    # it executes dotprod but does not advertise it, so tinylm (rightly) does not choose it.
    QEMU=qemu-arm TRIPLET=arm-linux-gnueabihf BUILD_CPU=cortex-a15
    DEFAULT_CPUS="cortex-a7" DEFAULT_KERNEL_CPUS="" DEFAULT_INFO_CPUS="cortex-a15"
    DEBS=("python$PYVER" libstdc++6 python3-numpy python3-sentencepiece)
    WHEELS=("${PURE_WHEELS[@]}")
    PIP_PLATFORMS=(linux_armv7l)
    ;;
  *)
    echo "TINYLM_ARM_ARCH=$ARCH: choose arm64 or armhf" >&2
    exit 2
    ;;
esac
CPUS="${TINYLM_ARM_CPUS-$DEFAULT_CPUS}"
KERNEL_CPUS="${TINYLM_ARM_KERNEL_CPUS-$DEFAULT_KERNEL_CPUS}"
INFO_CPUS="${TINYLM_ARM_INFO_CPUS-$DEFAULT_INFO_CPUS}"

# The path `tinylm info` must report on each CPU ("" = not checked).
expected_isa() {
  case "$ARCH:$1" in
    arm64:cortex-a53 | arm64:cortex-a72 | armhf:cortex-a7 | armhf:cortex-a15 | armhf:max) echo neon ;;
    arm64:cortex-a76) echo neon_dotprod ;;
    arm64:max) echo neon_i8mm ;;
    *) echo "" ;;
  esac
}

CACHE="${TINYLM_ARM_CACHE:-$HOME/.cache/tinylm-arm}/$ARCH"
ROOTFS="$CACHE/rootfs"
SITE="$CACHE/site"
LAUNCHER="$CACHE/python3"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tinylm-$ARCH.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step() { echo; echo "=== $ARCH: $* ($((SECONDS))s)"; }

# --------------------------------------------------------------------------- host tools
step "host packages"
need=()
command -v "$QEMU" >/dev/null || need+=(qemu-user)
command -v "$TRIPLET-g++" >/dev/null || need+=("g++-$TRIPLET")
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --------------------------------------------------------------------------- userland
# make_userland DEB_ARCH TRIPLET ROOTFS PACKAGE...: Debian's packages for DEB_ARCH and
# their dependencies, plus python's headers, unpacked into ROOTFS through a private apt
# configuration, so the host's own package state is untouched. ROOTFS/.complete (the
# package list) is written last, so an interrupted unpack is redone rather than half-used.
make_userland() {
  local deb_arch="$1" triplet="$2" rootfs="$3"
  shift 3
  local apt="$rootfs.apt" deb lib
  rm -rf "$apt" "$rootfs"
  mkdir -p "$apt"/{state/lists/partial,cache/archives/partial,sources.list.d,debs} "$rootfs"
  touch "$apt/status"
  # The machine's own mirror and suites, restricted to deb_arch. The security suite is
  # left out: a test userland needs none of its fixes, and its armhf index has been seen
  # out of step with its Release file on the mirror (`apt-get update` failed).
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    awk 'BEGIN { RS = ""; ORS = "\n\n" } !/security/' /etc/apt/sources.list.d/debian.sources \
      | sed "s/^Types: deb\$/Types: deb\nArchitectures: $deb_arch/" > "$apt/sources.list.d/debian.sources"
  else
    cat > "$apt/sources.list.d/debian.sources" <<EOF
Types: deb
Architectures: $deb_arch
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  cat > "$apt/apt.conf" <<EOF
Dir::State "$apt/state";
Dir::State::status "$apt/status";
Dir::Cache "$apt/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$apt/sources.list.d";
APT::Architecture "$deb_arch";
APT::Architectures { "$deb_arch"; };
APT::Sandbox::User "root";
EOF
  (
    export APT_CONFIG="$apt/apt.conf"
    apt-get update -qq
    apt-get install -y -qq --download-only --no-install-recommends "$@" >/dev/null
    # Headers only: the -dev packages' own dependencies are not needed.
    cd "$apt/debs" && apt-get download -qq "libpython$PYVER-dev" "python$PYVER-dev" >/dev/null
  )
  for deb in "$apt"/cache/archives/*.deb "$apt"/debs/*.deb; do
    dpkg -x "$deb" "$rootfs"
  done
  # What maintainer scripts would have done: Debian's BLAS and LAPACK (numpy's) are
  # reached through update-alternatives symlinks, made here relative to stay in ROOTFS.
  for lib in blas lapack; do
    if [[ -e "$rootfs/usr/lib/$triplet/$lib/lib$lib.so.3" ]]; then
      ln -sfn "$lib/lib$lib.so.3" "$rootfs/usr/lib/$triplet/lib$lib.so.3"
    fi
  done
  rm -rf "$apt"
  echo "$*" > "$rootfs/.complete"
  echo "unpacked $(du -sh "$rootfs" | cut -f1)"
}

if [[ ! -x "$ROOTFS/usr/bin/python$PYVER" || "$(cat "$ROOTFS/.complete" 2>/dev/null)" != "${DEBS[*]}" ]]; then
  step "$ARCH CPython userland -> $ROOTFS"
  make_userland "$ARCH" "$TRIPLET" "$ROOTFS" "${DEBS[@]}"
fi

# The launcher is sys.executable under emulation. QEMU_CPU chooses the CPU model.
# qemu -L makes the target's absolute paths (its dynamic loader and libraries) resolve in
# ROOTFS, falling back to the host's file where ROOTFS has none, but qemu 7.2 does not
# translate statx(), which 32-bit glibc uses for every stat(): python on armhf would see
# the host's /usr/lib/python3.11 and miss its own extension modules. PYTHONHOME gives
# python its real paths instead, the same for both syscalls (and no host packages).
cat > "$LAUNCHER" <<EOF
#!/bin/sh
export PYTHONHOME="$ROOTFS/usr"
exec $QEMU -L "$ROOTFS" -0 "\$0" "$ROOTFS/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$LAUNCHER"

# --------------------------------------------------------------------------- PyPI wheels
# Resolved on the host for the target.
if [[ "$(cat "$SITE/.complete" 2>/dev/null)" != "${WHEELS[*]}" ]]; then
  step "wheels -> $SITE"
  rm -rf "$SITE"
  python3 -m pip install -q --target "$SITE" "${PIP_PLATFORMS[@]/#/--platform=}" \
    --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" --only-binary=:all: \
    "${WHEELS[@]}"
  echo "${WHEELS[*]}" > "$SITE/.complete"
fi

# --------------------------------------------------------------------------- the wheel
step "build tinylm's $ARCH wheel (setup.py, cross compiler, under emulation)"
# The host's cross compiler runs natively. setuptools passes CPPFLAGS (not CFLAGS) to C++.
# Built from a copy, so that the checkout gets no build/ or *.egg-info from another arch.
mkdir -p "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
  | (cd "$REPO" && xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true)
CPPFLAGS="-I$ROOTFS/usr/include/python$PYVER -idirafter $ROOTFS/usr/include" \
  PYTHONPATH="$SITE" QEMU_CPU="$BUILD_CPU" "$LAUNCHER" -m pip wheel -q --no-build-isolation \
  --no-deps -w "$WORK/dist" "$WORK/src"
PYTHONPATH="$SITE" QEMU_CPU="$BUILD_CPU" "$LAUNCHER" -m pip install -q --root-user-action=ignore \
  --no-deps --no-index --target "$WORK/inst" "$WORK"/dist/*.whl
ls "$WORK"/dist
# The wheel's requirements are met by the packages the tests run with (on armhf, Debian's
# numpy and sentencepiece), so that `pip install` beside them would fetch nothing.
PYTHONPATH="$SITE" QEMU_CPU="$BUILD_CPU" "$LAUNCHER" -m pip install -q --dry-run --no-index \
  --break-system-packages --root-user-action=ignore "$WORK"/dist/*.whl
# TINYLM_ARM_WHEEL_DIR keeps the wheel (e.g. to copy it to a Pi running Raspberry Pi OS
# bookworm, whose glibc and python3.11 are the ones it was built against).
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
# numpy's OpenBLAS chooses its SVE kernels on `max`, and QEMU runs those several times
# slower than NEON (the training tests took 128 s there against 20 s with NEON kernels),
# leaving floating-point exception flags behind too (numpy warned "divide by zero
# encountered in matmul"). numpy's BLAS is not what these runs check, so `max` gets the
# Neoverse N1's NEON kernels (a Pi 5's cortex-a76 is of that family).
blas_core() {
  [[ "$ARCH:$1" == arm64:max ]] && echo NEOVERSEN1 || echo ""
}

if [[ -n "${TINYLM_ARM_PYTEST_ARGS+set}" ]]; then
  read -r -a PYTEST_ARGS <<<"$TINYLM_ARM_PYTEST_ARGS"
else
  PYTEST_ARGS=(-m "not slow and not native")
fi
failed=()

# check_info CPU: `tinylm info` (the installed command) on one emulated CPU, printed, and
# the path it chose checked against the one that CPU must get.
check_info() {
  local cpu="$1" expect info active
  expect="$(expected_isa "$cpu")"
  step "QEMU_CPU=$cpu"
  # From / so that `import tinylm` can only find the installed wheel.
  if ! info="$(cd / && QEMU_CPU="$cpu" PYTHONPATH="$WORK/inst:$SITE" "$LAUNCHER" -m tinylm info)"; then
    failed+=("$cpu: tinylm info failed")
    return
  fi
  echo "$info"
  active="$(sed -n 's/^active path: *\([a-z0-9_]*\).*/\1/p' <<<"$info")"
  if [[ -n "$expect" && "$active" != "$expect" ]]; then
    echo "expected active path $expect on $cpu, got '$active'" >&2
    failed+=("$cpu: active path '$active'")
  fi
}

# run_pytest CPU PYTEST_ARGUMENT...: the installed wheel's tests on one emulated CPU;
# returns pytest's status.
run_pytest() {
  local cpu="$1" blas=()
  shift
  [[ -n "$(blas_core "$cpu")" ]] && blas=(OPENBLAS_CORETYPE="$(blas_core "$cpu")")
  (cd / && env QEMU_CPU="$cpu" PYTHONPATH="$WORK/inst:$SITE" TINYLM_TEST_EMULATED=1 \
     TINYLM_ARM_REFERENCE="$WORK/reference" TINYLM_ARM_EXPECT_ISA="$(expected_isa "$cpu")" \
     "${blas[@]}" "$LAUNCHER" -m pytest -q -p no:cacheprovider -c "$REPO/pyproject.toml" \
     --rootdir "$REPO" "$@")
}

# The tests that take another path on another CPU of the same architecture: the kernels,
# the engine and the comparison with x86, each trying every path the CPU has (on max:
# neon, dotprod and i8mm). The rest of the suite (training, tokenizers, files, the
# sampler, the CLI) runs the same code on every CPU of an architecture.
KERNEL_TESTS=(test_attention.py test_int8.py test_engine.py test_cross_machine.py)

# The CPUs' runs go side by side, as many at a time as there are cores (TINYLM_ARM_JOBS):
# each is one emulated process, busy on about one core. Each one's output is shown once
# all have finished, run by run (a CPU may have two: the suite and the kernel tests).
JOBS="${TINYLM_ARM_JOBS:-$(nproc)}"
EXTRA_ARGS=("$@")
runs=()
start_run() {  # start_run CPU WHAT PYTEST_ARGUMENT...: pytest on CPU in the background
  local cpu="$1" what="$2" i="${#runs[@]}"
  shift 2
  check_info "$cpu"
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  (
    status=0
    run_pytest "$cpu" "$@" "${PYTEST_ARGS[@]}" "${EXTRA_ARGS[@]}" || status=$?
    echo "$status" > "$WORK/run-$i.status"
  ) > "$WORK/run-$i.log" 2>&1 &
  runs+=("$cpu:$what")
}
for cpu in $CPUS; do
  start_run "$cpu" "the suite" "$REPO/tests" --ignore="$REPO/tests/test_native_driver.py" \
    --ignore="$REPO/tests/arm"
done
for cpu in $KERNEL_CPUS; do
  start_run "$cpu" "the kernel tests" "${KERNEL_TESTS[@]/#/"$REPO"/tests/}"
done
wait
for i in "${!runs[@]}"; do
  cpu="${runs[$i]%%:*}" what="${runs[$i]#*:}"
  status="$(cat "$WORK/run-$i.status" 2>/dev/null || echo "none")"
  step "pytest ($what) on QEMU_CPU=$cpu: exit $status"
  cat "$WORK/run-$i.log"
  if [[ "$status" == 5 && "$what" == "the kernel tests" && ${#EXTRA_ARGS[@]} -gt 0 ]]; then
    echo "(the arguments given select none of the kernel tests on $cpu)"
  elif [[ "$status" != 0 ]]; then
    [[ "$status" == 5 ]] && echo "pytest collected no tests on $cpu" >&2
    failed+=("$cpu ($what): pytest exit $status")
  fi
done
for cpu in $INFO_CPUS; do
  check_info "$cpu"
done

if ((${#failed[@]})); then
  echo "=== $ARCH: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "=== $ARCH: passed: the suite on ${CPUS:-no CPU}; the kernel tests on" \
     "${KERNEL_CPUS:-no other CPU}; tinylm info on ${INFO_CPUS:-no other CPU}" \
     "($((SECONDS))s)"
