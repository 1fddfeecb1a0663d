"""Builds the native C++ test driver for every target and runs it on every CPU model.

The driver (csrc/tests/) runs each kernel against its scalar reference on every
instruction-set level the CPU offers, and checks CPU detection and the thread pool.
Targets and CPUs come from csrc/tests/build.py: x86-64 natively and under
`qemu-x86_64 -cpu Westmere/Haswell`, the AVX-512/VNNI sources against SIMDe, aarch64
under qemu as Pi 3/4/5 and `max`, and 32-bit ARM under qemu-arm.

The installed package's `tinylm info` also runs under `qemu-x86_64 -cpu Westmere` and
`-cpu Haswell` (the same CPU models): the Python extension must fall back the same way.

A missing cross compiler, qemu or SIMDe skips a test with the Debian package to install,
except in CI (CI=true), where it fails: CI must not pass by skipping.
"""
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_build():
    spec = importlib.util.spec_from_file_location("tinylm_native_build", REPO / "csrc/tests/build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _load_build()

RUNS = [(target, run.cpu) for target, runs in build.RUNS.items() for run in runs]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)
TIMEOUT_S = 600
_built: dict[str, Path | Exception] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tools(target: str, cpu: str | None = None) -> None:
    run = build.find_run(target, cpu) if cpu else None
    missing = build.missing_tools(target, run)
    if missing:
        message = f"{target}{' ' + cpu if cpu else ''} needs: {'; '.join(missing)}"
        if in_ci():
            pytest.fail(f"{message} (CI must run every target, not skip it)")
        pytest.skip(message)


def built_driver(target: str) -> Path:
    """Builds a target once per session (objects are cached on disk across sessions)."""
    if target not in _built:
        try:
            _built[target] = build.build(target)
        except build.BuildError as e:
            _built[target] = e
    result = _built[target]
    if isinstance(result, Exception):
        pytest.fail(str(result), pytrace=False)
    return result


def run_driver(target: str, cpu: str, *args: str, **env: str):
    require_tools(target, cpu)
    built_driver(target)
    return build.run_driver(target, cpu, list(args), timeout=TIMEOUT_S, extra_env=env)


@pytest.mark.parametrize("target,cpu", RUNS, ids=[f"{t}-{c}" for t, c in RUNS])
def test_driver_passes(target, cpu):
    result = run_driver(target, cpu)
    summary = SUMMARY.findall(result.stdout)
    assert result.returncode == 0, (
        f"driver {target} on {cpu}: {build.describe_exit(result.returncode)}\n{result.stdout[-6000:]}")
    assert summary, f"no 'N passed, N failed' line in the output:\n{result.stdout[-3000:]}"
    passed, failed = map(int, summary[-1])
    assert failed == 0 and passed > 0, result.stdout[-6000:]


def test_driver_lists_every_test_source():
    """Every csrc/tests/test_*.cpp is compiled into the driver, and every kernel
    source of the architecture, so a new kernel or test file needs no harness change."""
    sources = {job.source.name for job in build.compile_jobs("host")}
    for test_file in (REPO / "csrc/tests").glob("test_*.cpp"):
        assert test_file.name in sources
    assert {"main.cpp", "cpu.cpp", "threads.cpp", "test_runtime.cpp"} <= sources
    arm = {job.source.name for job in build.compile_jobs("aarch64")}
    assert not any(name.endswith(("_avx2.cpp", "_avx512.cpp")) for name in arm)
    assert not any(name.endswith("_neon.cpp") for name in sources)


def test_tinylm_isa_caps_the_level():
    """TINYLM_ISA, read by the driver at start, caps the active level."""
    result = run_driver("host", "native", "runtime_detects", TINYLM_ISA="scalar")
    assert result.returncode == 0, result.stdout
    assert "active isa: scalar" in result.stdout


def test_unknown_tinylm_isa_is_refused_with_the_choices():
    result = run_driver("host", "native", "runtime_detects", TINYLM_ISA="sse9")
    assert result.returncode != 0
    assert "TINYLM_ISA=sse9" in result.stdout and "available: scalar" in result.stdout


def test_a_failing_check_fails_the_driver():
    """The harness sees a failure: a wrong expectation makes the driver exit non-zero."""
    result = run_driver("host", "native", "runtime_detects", TINYLM_EXPECT_ISAS="scalar,bogus")
    assert result.returncode == 1, result.stdout
    assert "expected scalar,bogus" in result.stdout
    assert SUMMARY.findall(result.stdout)[-1] == ("0", "1")


# ----------------------------------------------------------------------------- tinylm info

# The x86 CPU models the driver runs on under qemu-x86_64 (Westmere: no AVX; Haswell:
# AVX2, no AVX-512), each with the levels it must offer, the last being the one chosen.
EMULATED_X86 = [run for run in build.RUNS["host"] if run.emulator == "qemu-x86_64"]


def tinylm_info(*command_prefix: str) -> dict[str, str]:
    """`python -m tinylm info` from this interpreter (the installed package, or whatever
    PYTHONPATH names: run from / so that the source tree is not imported), as a dict."""
    env = {k: v for k, v in os.environ.items() if k != "TINYLM_ISA"}  # the CPU decides
    proc = subprocess.run([*command_prefix, sys.executable, "-m", "tinylm", "info"], cwd="/",
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"tinylm info failed ({build.describe_exit(proc.returncode)}):\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    info["header"] = lines[0]
    return info


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.parametrize("run", EMULATED_X86, ids=[run.cpu for run in EMULATED_X86])
def test_tinylm_info_on_an_emulated_x86_cpu(run):
    """On a CPU without AVX the package chooses scalar for every kernel; on Haswell, avx2
    and nothing beyond it, whatever this machine has."""
    if shutil.which(run.emulator) is None:
        message = f"{run.emulator} is missing (apt-get install {build.EMULATOR_PACKAGE[run.emulator]})"
        if in_ci():
            pytest.fail(f"{message}; CI must not skip this test")
        pytest.skip(message)
    info = tinylm_info(run.emulator, "-cpu", run.qemu_cpu or run.cpu)
    levels = run.expect_isas.split(",")
    assert info["available paths"] == ", ".join(levels), info
    assert info["active path"] == levels[-1], info
    paths = [info[k] for k in ("attention path", "int8 path", "decode fp32", "decode int8")]
    for path in paths:
        assert path.split()[0] in levels, info  # no kernel uses an instruction set beyond them
    if levels == ["scalar"]:
        assert all(path == "scalar" for path in paths), info
        assert "avx" not in info["cpu features"], info


# In an objdump -d listing (AT&T syntax): the upper halves that vzeroupper clears (those
# of registers 16-31 never make SSE code slow); a function's exits: a return (after any
# rep/bnd/notrack prefix) or a jump to another function (a tail call).
WIDE = re.compile(r"%[yz]mm([0-9]|1[0-5])\b")
RETURN = re.compile(r"\t(?:(?:rep|repz|bnd|notrack) )*retq?\b")
JUMP = re.compile(r"\tjmp\s+[0-9a-f]+ <(.*?)(?:\+0x[0-9a-f]+)?>$")  # C++ names hold < and >


def functions_leaving_vectors_dirty(disassembly):
    """Functions of an x86 disassembly (objdump -d) that use the upper halves of
    registers 0-15 and leave (return or tail-jump) with no vzeroupper anywhere in them."""
    dirty, name = [], None
    for line in disassembly.splitlines() + ["0 <end>:"]:
        if line.endswith(">:"):  # a function's first line: the previous one is complete
            if name and wide and leaves and not clean:
                dirty.append(name)
            name, wide, clean, leaves = line, False, False, False
            symbol = line[line.index("<") + 1:-2]
        elif name:
            wide = wide or WIDE.search(line) is not None
            clean = clean or "vzeroupper" in line
            jump = JUMP.search(line)
            leaves = leaves or RETURN.search(line) is not None or bool(jump and jump.group(1) != symbol)
    return dirty


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_no_kernel_returns_with_dirty_vector_registers():
    """A function that returns with the upper halves of the vector registers dirty makes
    every SSE instruction after it slow (the portable code, the sampler's exp() calls):
    a float32 GEMV helper taking vectors by value did, and `baby` fp32 decode steps took
    1.3-1.7x as long (csrc/engine/gemv_streams.h)."""
    from tinylm import _C
    if shutil.which("objdump") is None:
        message = "objdump is missing (apt-get install binutils)"
        if in_ci():
            pytest.fail(f"{message}; CI must not skip this test")
        pytest.skip(message)
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", _C.__file__],
                         capture_output=True, text=True, check=True).stdout
    # Stripped of its symbols, the listing would show a few huge blocks, each "clean" if
    # it holds one vzeroupper anywhere: the check needs the kernels as functions.
    kernels = ("gemv_panels_avx512vnni(", "quantize_row_avx2(", "silu_mul_avx512(")
    functions = [line for line in out.splitlines() if line.endswith(">:")]
    if not all(any(k in f for f in functions) for k in kernels):
        message = f"{_C.__file__} has no symbols for its kernels (stripped?): nothing to check"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert functions_leaving_vectors_dirty(out) == []


def test_the_dirty_vector_check_finds_one():
    listing = ("0000 <wide_and_clean>:\n  1:\tvmovups (%rdi),%zmm0\n  2:\tvzeroupper\n  3:\tret\n"
               "0010 <narrow>:\n  11:\tmovups (%rdi),%xmm0\n  12:\tret\n"
               "0020 <high_registers_only>:\n  21:\tvaddps %zmm17,%zmm16,%zmm20\n  22:\tret\n"
               "0030 <void loops<V>(V)>:\n  31:\tvaddps %ymm1,%ymm0,%ymm0\n"
               "  32:\tjmp    31 <void loops<V>(V)+0x1>\n"
               "0040 <wide_and_dirty>:\n  41:\tvaddps %ymm1,%ymm0,%ymm0\n  42:\trepz ret\n"
               "0050 <tail_calls_dirty>:\n  51:\tvmovups %zmm3,(%rdi)\n"
               "  52:\tjmp    10 <narrow>\n")
    assert functions_leaving_vectors_dirty(listing) == ["0040 <wide_and_dirty>:",
                                                        "0050 <tail_calls_dirty>:"]
