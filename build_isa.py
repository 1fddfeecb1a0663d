"""Which C++ sources are built for which CPU, and with which compiler flags.

Shared by setup.py (the Python extension) and csrc/tests/build.py (the native test
driver, also cross-compiled for ARM), so the two can never disagree.

Kernel files are named for the instruction set they use: `gemm_avx2.cpp`,
`attention_neon.cpp`. The suffix decides the flags the file is compiled with and on
which architectures it is compiled at all; a file without a known suffix is portable
C++ compiled everywhere with no extra flags.
"""
import platform
from pathlib import Path

# suffix -> (architectures, extra compiler flags)
ISA_FLAGS = {
    "avx2": ("x86_64", ["-mavx2", "-mfma", "-mf16c"]),
    "avx512": ("x86_64", ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"]),
    "avx512vnni": ("x86_64", ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512dq",
                              "-mavx512vl", "-mavx512vnni"]),
    "avxvnni": ("x86_64", ["-mavx2", "-mfma", "-mavxvnni"]),
    "neon": ("aarch64 armv7", []),
    "neon_dotprod": ("aarch64 armv7", ["-march=armv8.2-a+dotprod"]),
    "neon_i8mm": ("aarch64", ["-march=armv8.2-a+dotprod+i8mm"]),
}

# Extra flags every file needs on an architecture: 32-bit ARM must ask for NEON, and for
# ARMv7's NEON (neon-vfpv4), not ARMv8's, whose rounding instructions (vrint*) the
# compiler would otherwise emit and a Cortex-A7 (Raspberry Pi 2) cannot execute.
#
# On ARM, GCC fuses a float multiply and a following add into one FMA by default
# (-ffp-contract=fast), which x86 builds of the same portable code do not (no -mfma there):
# the scalar quantizer's `round_even(x * inv)` (x * inv + 2^23 * 1.5 - ...) then rounds the
# exact product instead of the float one, and 5e-31 * (127 / 1e-30) = 63.5 became 63, not
# 64 (tests/test_int8.py::test_quantize_tiny_rows under qemu-aarch64). Off, so that one
# model gives the same numbers on a Pi as on a laptop; NEON code asks for FMA explicitly.
# -mfp16-format=ieee: 32-bit ARM's half-to-float intrinsics (the int8 models' half KV
# cache) exist only with it.
ARCH_FLAGS = {"aarch64": ["-ffp-contract=off"],
              "armv7": ["-mfpu=neon-vfpv4", "-mfloat-abi=hard", "-ffp-contract=off",
                        "-mfp16-format=ieee"]}

# Flags for one instruction set on one architecture, after the two above (the last
# -mfpu wins): 32-bit dotprod code needs the ARMv8 FPU description.
ARCH_ISA_FLAGS = {("armv7", "neon_dotprod"): ["-mfpu=neon-fp-armv8"]}

CSRC = Path(__file__).resolve().parent / "csrc"


def normalize_arch(machine: str) -> str:
    """Map `platform.machine()` spellings onto the names used above."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine.startswith("armv7") or machine.startswith("armv8l") or machine == "armhf":
        return "armv7"
    return machine


def host_arch() -> str:
    return normalize_arch(platform.machine())


def isa_of(path: Path) -> str | None:
    """The instruction-set suffix of a kernel file, or None for portable code."""
    stem = path.stem
    for suffix in sorted(ISA_FLAGS, key=len, reverse=True):
        if stem.endswith("_" + suffix):
            return suffix
    return None


def kernel_sources(arch: str) -> list[tuple[Path, list[str]]]:
    """Every kernel source for `arch` (everything in csrc/ except the Python
    bindings and the test driver) with the extra flags it needs."""
    result = []
    for path in sorted(CSRC.rglob("*.cpp")):
        rel = path.relative_to(CSRC)
        if rel.parts[0] == "tests" or rel.name == "bindings.cpp":
            continue
        isa = isa_of(path)
        flags = list(ARCH_FLAGS.get(arch, []))
        if isa is not None:
            arches, isa_flags = ISA_FLAGS[isa]
            if arch not in arches.split():
                continue
            flags += isa_flags + ARCH_ISA_FLAGS.get((arch, isa), [])
        result.append((path, flags))
    return result
