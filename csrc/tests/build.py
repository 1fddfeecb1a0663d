#!/usr/bin/env python3
"""Builds the native test driver for a target CPU family and runs it, under qemu if needed.

The driver is csrc/tests/main.cpp + every csrc/tests/test_*.cpp + every kernel source
(build_isa.kernel_sources, which also brings cpu.cpp and threads.cpp), each kernel file
compiled with its own instruction-set flags exactly as setup.py compiles it.

Targets:
  host       this machine's g++ (x86-64); also run under `qemu-x86_64 -cpu Westmere`
             (no AVX: must fall back to scalar) and `-cpu Haswell` (AVX2, no AVX-512)
  x86-simde  the x86 files compiled against SIMDe: the AVX-512/VNNI files get AVX2 flags
             and cpu.cpp reports those features, so their *logic* is tested on any AVX2 CPU
  aarch64    aarch64-linux-gnu-g++, static; run under qemu-aarch64 as Pi 3/4/5 and `max`
  armv7      arm-linux-gnueabihf-g++, static; run under qemu-arm as cortex-a7/a15 and `max`

Objects are cached in csrc/tests/out/<target>/ and rebuilt when the source, a header it
includes (from the compiler's -MMD dependency list) or the command line changes.

Usage:
  python csrc/tests/build.py                          build and run host
  python csrc/tests/build.py --target all             every target, every CPU
  python csrc/tests/build.py --target aarch64 --cpu cortex-a72 -- attention
                                                      one CPU, tests matching "attention"
  python csrc/tests/build.py --target armv7 --no-run  build only
  python csrc/tests/build.py --list                   targets, CPUs and what they need

Environment passed to the driver: TINYLM_EXPECT_ISAS (the levels this CPU must report;
checked by test_runtime.cpp), TINYLM_TEST_EMULATED=1 under qemu, and TINYLM_TEST_SCALE
(0.25 under qemu unless already set) for tests to shrink their case counts.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_build_isa():
    """build_isa.py from the checkout, loaded by path: putting the checkout on sys.path
    would also let `import tinylm` find the source tree (without its extension) in the
    pytest process that loads this file and in every subprocess given its sys.path."""
    spec = importlib.util.spec_from_file_location("build_isa", REPO / "build_isa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_isa = _load_build_isa()
ARCH_FLAGS, CSRC, ISA_FLAGS = _isa.ARCH_FLAGS, _isa.CSRC, _isa.ISA_FLAGS
host_arch, isa_of, kernel_sources = _isa.host_arch, _isa.isa_of, _isa.kernel_sources

TESTS_DIR = CSRC / "tests"
OUT_DIR = TESTS_DIR / "out"

COMMON_FLAGS = ["-O3", "-std=c++17", "-fno-trapping-math", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-DTINYLM_TEST_BUILD", f"-I{CSRC}"]

# The instruction sets SIMDe emulates with AVX2 code in the x86-simde build.
SIMDE_EMULATED = ("avx512", "avx512vnni", "avxvnni")

# Scale of the tests' case counts under emulation (~0.5 GMAC/s), unless the caller set one.
EMULATED_TEST_SCALE = "0.25"


@dataclass
class Target:
    arch: str                      # build_isa architecture name
    cxx: str                       # compiler executable
    cxx_package: str               # the Debian package that provides it
    defines: list[str] = field(default_factory=list)
    link_flags: list[str] = field(default_factory=list)
    header_check: str | None = None  # a header the target needs, e.g. SIMDe
    header_package: str | None = None

    def flags_for(self, path: Path, isa_flags: list[str]) -> list[str]:
        return isa_flags


class SimdeTarget(Target):
    def flags_for(self, path: Path, isa_flags: list[str]) -> list[str]:
        if isa_of(path) in SIMDE_EMULATED:
            return list(ISA_FLAGS["avx2"][1])  # SIMDe turns the AVX-512 intrinsics into AVX2
        return isa_flags


TARGETS: dict[str, Target] = {
    "host": Target(host_arch(), os.environ.get("CXX", "g++"), "g++", link_flags=["-pthread"]),
    "x86-simde": SimdeTarget("x86_64", os.environ.get("CXX", "g++"), "g++",
                             # -Wno-psabi: SIMDe passes 64-byte vectors by value without
                             # AVX-512, and GCC notes that ABI on every such function.
                             defines=["-DTINYLM_SIMDE", "-DTINYLM_SIMDE_FEATURES", "-Wno-psabi"],
                             link_flags=["-pthread"],
                             header_check="simde/x86/avx512.h", header_package="libsimde-dev"),
    "aarch64": Target("aarch64", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu",
                      link_flags=["-static", "-pthread"]),
    # -Wno-psabi: GCC notes an ABI change of GCC 7.1 on every std::sort; irrelevant here.
    "armv7": Target("armv7", "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf", defines=["-Wno-psabi"],
                    link_flags=["-static", "-pthread"]),
}


@dataclass
class Run:
    """One way of running a target's driver: natively or on an emulated CPU."""
    cpu: str                       # "native" or a qemu -cpu model
    emulator: str | None           # qemu binary, None to run directly
    expect_isas: str | None        # the levels this CPU must report (None: read /proc/cpuinfo)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    qemu_cpu: str | None = None    # the -cpu argument, when it is more than the model's name


RUNS: dict[str, list[Run]] = {
    "host": [
        Run("native", None, None, note="every level this CPU has, checked against /proc/cpuinfo"),
    ] + ([] if host_arch() != "x86_64" else [
        Run("Westmere", "qemu-x86_64", "scalar", note="no AVX: scalar fallback"),
        # Without the system-level features TCG lacks, which it would warn about per thread.
        Run("Haswell", "qemu-x86_64", "scalar,avx2", note="AVX2+FMA, no AVX-512",
            qemu_cpu="Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"),
    ]),
    "x86-simde": [
        Run("native", None, "scalar,avx2,avxvnni,avx512,avx512vnni",
            note="AVX-512/VNNI kernels' logic via SIMDe (AVX2 code)"),
    ],
    "aarch64": [
        Run("cortex-a53", "qemu-aarch64", "scalar,neon", note="Pi 3 / Zero 2"),
        Run("cortex-a72", "qemu-aarch64", "scalar,neon", note="Pi 4: NEON, no dotprod"),
        Run("cortex-a76", "qemu-aarch64", "scalar,neon,neon_dotprod", note="Pi 5: dotprod"),
        Run("max", "qemu-aarch64", "scalar,neon,neon_dotprod,neon_i8mm", note="dotprod + i8mm"),
    ],
    "armv7": [
        Run("cortex-a7", "qemu-arm", "scalar,neon", note="Pi 2, 32-bit"),
        Run("cortex-a15", "qemu-arm", "scalar,neon"),
        # qemu-arm -cpu max executes dotprod but does not advertise it in HWCAP.
        Run("max", "qemu-arm", "scalar,neon,neon_dotprod", env={"TINYLM_TEST_ASSUME_DOTPROD": "1"},
            note="dotprod executed, declared by TINYLM_TEST_ASSUME_DOTPROD"),
    ],
}

EMULATOR_PACKAGE = {"qemu-x86_64": "qemu-user", "qemu-aarch64": "qemu-user", "qemu-arm": "qemu-user"}


# ----------------------------------------------------------------------------- tools


def missing_tools(target: str, run: Run | None = None) -> list[str]:
    """What is missing to build (and run) a target, each as 'tool (apt install PACKAGE)'."""
    t = TARGETS[target]
    missing = []
    if shutil.which(t.cxx) is None:
        missing.append(f"{t.cxx} (apt-get install {t.cxx_package})")
    elif t.header_check and not _header_exists(t.cxx, t.header_check):
        missing.append(f"<{t.header_check}> (apt-get install {t.header_package})")
    if run is not None and run.emulator and shutil.which(run.emulator) is None:
        missing.append(f"{run.emulator} (apt-get install {EMULATOR_PACKAGE[run.emulator]})")
    return missing


def _header_exists(cxx: str, header: str) -> bool:
    probe = subprocess.run([cxx, "-x", "c++", "-E", "-", "-o", os.devnull],
                           input=f"#include <{header}>\n", text=True, capture_output=True)
    return probe.returncode == 0


# ----------------------------------------------------------------------------- build


@dataclass
class Compile:
    source: Path
    obj: Path
    command: list[str]

    @property
    def stamp(self) -> Path:
        return self.obj.with_suffix(".cmd")

    @property
    def depfile(self) -> Path:
        return self.obj.with_suffix(".d")

    def up_to_date(self) -> bool:
        """True if the object exists, was built by the same command, and is newer than
        the source and every header the compiler said it read."""
        if not (self.obj.exists() and self.stamp.exists() and self.depfile.exists()):
            return False
        if self.stamp.read_text() != shlex.join(self.command):
            return False
        built = self.obj.stat().st_mtime
        for dep in _parse_depfile(self.depfile):
            try:
                if Path(dep).stat().st_mtime > built:
                    return False
            except FileNotFoundError:  # a header was removed or renamed
                return False
        return True


def _parse_depfile(path: Path) -> list[str]:
    """The prerequisites of a make rule written by the compiler's -MMD."""
    text = path.read_text().replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    return [d.replace("\\ ", " ") for d in deps.split()]


def out_dir(target: str) -> Path:
    return OUT_DIR / target


def driver_path(target: str) -> Path:
    return out_dir(target) / "driver"


def test_sources() -> list[Path]:
    return [TESTS_DIR / "main.cpp"] + sorted(TESTS_DIR.glob("test_*.cpp"))


def compile_jobs(target: str) -> list[Compile]:
    t = TARGETS[target]
    arch_flags = list(ARCH_FLAGS.get(t.arch, []))
    sources = [(path, t.flags_for(path, flags)) for path, flags in kernel_sources(t.arch)]
    sources += [(path, arch_flags) for path in test_sources()]
    jobs = []
    for path, flags in sources:
        obj = out_dir(target) / "obj" / (str(path.relative_to(REPO)) + ".o")
        command = [t.cxx, *COMMON_FLAGS, *t.defines, *flags, "-MMD", "-MF",
                   str(obj.with_suffix(".d")), "-c", str(path), "-o", str(obj)]
        jobs.append(Compile(path, obj, command))
    return jobs


class BuildError(RuntimeError):
    pass


def _compile(job: Compile) -> tuple[Compile, subprocess.CompletedProcess | None]:
    if job.up_to_date():
        return job, None
    job.obj.parent.mkdir(parents=True, exist_ok=True)
    job.stamp.unlink(missing_ok=True)  # an interrupted compile must not look finished
    result = subprocess.run(job.command, capture_output=True, text=True)
    if result.returncode == 0:
        job.stamp.write_text(shlex.join(job.command))
    return job, result


def build(target: str, jobs: int | None = None, verbose: bool = False) -> Path:
    """Compiles what changed and links the driver; returns its path. Raises BuildError
    with the compiler's messages when a file fails to compile or link."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    missing = missing_tools(target)
    if missing:
        raise BuildError(f"[{target}] cannot build, missing: {'; '.join(missing)}")
    t = TARGETS[target]
    work = compile_jobs(target)
    started = time.monotonic()
    compiled, errors = 0, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        for job, result in pool.map(_compile, work):
            if result is None:
                continue
            compiled += 1
            rel = job.source.relative_to(REPO)
            if verbose:
                print(f"[{target}] {shlex.join(job.command)}", file=sys.stderr)
            if result.returncode != 0:
                errors.append(f"[{target}] compiling {rel} failed:\n$ {shlex.join(job.command)}\n"
                              f"{result.stderr}")
            elif result.stderr.strip():  # warnings: show them, they are often bugs
                print(f"[{target}] {rel}:\n{result.stderr}", file=sys.stderr)
    if errors:
        raise BuildError("\n".join(errors))
    driver = driver_path(target)
    objects = [str(job.obj) for job in work]
    link = [t.cxx, *objects, "-o", str(driver), *t.link_flags]
    stamp = driver.with_suffix(".cmd")
    stale = (not driver.exists() or not stamp.exists() or stamp.read_text() != shlex.join(link)
             or any(Path(o).stat().st_mtime > driver.stat().st_mtime for o in objects))
    if stale:
        stamp.unlink(missing_ok=True)
        result = subprocess.run(link, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"[{target}] linking failed:\n$ {shlex.join(link)}\n{result.stderr}")
        stamp.write_text(shlex.join(link))
    print(f"[{target}] {compiled} of {len(work)} files compiled{', linked' if stale else ''} "
          f"in {time.monotonic() - started:.1f}s -> {driver.relative_to(REPO)}", file=sys.stderr)
    return driver


# ----------------------------------------------------------------------------- run


def find_run(target: str, cpu: str) -> Run:
    for run in RUNS[target]:
        if run.cpu == cpu:
            return run
    if cpu == "native" or target not in ("aarch64", "armv7", "host"):
        raise ValueError(f"unknown cpu {cpu!r} for {target}; "
                         f"choose from {', '.join(r.cpu for r in RUNS[target])}")
    # Any other qemu CPU model works too, without an expectation to check.
    emulator = {"aarch64": "qemu-aarch64", "armv7": "qemu-arm", "host": "qemu-x86_64"}[target]
    return Run(cpu, emulator, None)


def host_expected_isas() -> str | None:
    """The levels this machine must report, read independently of cpuid/getauxval from
    the kernel's /proc/cpuinfo; None where that is unavailable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            break
    arch = host_arch()
    levels = ["scalar"]
    if arch == "x86_64":
        if "sse4_1" not in flags:
            return None
        avx2 = {"avx2", "fma", "f16c"} <= flags
        avx512 = avx2 and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
        wanted = [("avx2", avx2), ("avxvnni", avx2 and "avx_vnni" in flags),
                  ("avx512", avx512), ("avx512vnni", avx512 and "avx512_vnni" in flags)]
    elif arch in ("aarch64", "armv7"):
        neon = arch == "aarch64" or "neon" in flags
        dotprod = neon and "asimddp" in flags
        wanted = [("neon", neon), ("neon_dotprod", dotprod),
                  ("neon_i8mm", arch == "aarch64" and dotprod and "i8mm" in flags)]
    else:
        return None
    return ",".join(levels + [name for name, present in wanted if present])


def run_command(target: str, run: Run, args: list[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the driver on `run`'s CPU."""
    command = [str(driver_path(target)), *args]
    if run.emulator:
        command = [run.emulator, "-cpu", run.qemu_cpu or run.cpu, *command]
    env = {k: v for k, v in os.environ.items() if k != "TINYLM_ISA"}  # tests pick levels themselves
    env.pop("TINYLM_EXPECT_ISAS", None)
    expect = run.expect_isas
    if expect is None and run.emulator is None and TARGETS[target].arch == host_arch():
        expect = host_expected_isas()
    if expect:
        env["TINYLM_EXPECT_ISAS"] = expect
    if run.emulator:
        env["TINYLM_TEST_EMULATED"] = "1"
        env.setdefault("TINYLM_TEST_SCALE", EMULATED_TEST_SCALE)
    env.update(run.env)
    return command, env


def run_driver(target: str, cpu: str, args: list[str] = (), timeout: float = 600,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the (already built) driver on one CPU; output is captured (stdout + stderr)."""
    run = find_run(target, cpu)
    command, env = run_command(target, run, list(args))
    env.update(extra_env or {})
    return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def describe_exit(code: int) -> str:
    """'exit 1', or the signal for a crash (a shell's 128+N or Python's -N)."""
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum:
        try:
            return f"exit {code} ({signal.Signals(signum).name})"
        except ValueError:
            pass
    return f"exit {code}"


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="host", help=f"{', '.join(TARGETS)} or all")
    parser.add_argument("--cpu", action="append",
                        help="run only on this CPU (repeatable; default: every CPU of the target)")
    parser.add_argument("--no-run", action="store_true", help="build only")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compiles")
    parser.add_argument("-v", "--verbose", action="store_true", help="print compile commands")
    parser.add_argument("--list", action="store_true", help="list targets and CPUs")
    parser.add_argument("filters", nargs="*", help="run only tests whose name contains one")
    opts = parser.parse_args(argv)

    targets = list(TARGETS) if opts.target == "all" else [opts.target]
    if opts.list:
        for name in TARGETS:
            need = missing_tools(name)
            print(f"{name}: {TARGETS[name].cxx}" + (f"  MISSING {'; '.join(need)}" if need else ""))
            for run in RUNS[name]:
                how = f"{run.emulator} -cpu {run.cpu}" if run.emulator else "native"
                print(f"  {run.cpu:<11} {how:<28} expects {run.expect_isas or 'from /proc/cpuinfo'}"
                      f"  {run.note}")
        return 0
    failures = []
    for target in targets:
        try:
            build(target, opts.jobs, opts.verbose)
        except BuildError as e:
            print(e, file=sys.stderr)
            failures.append(f"{target}: build")
            continue
        if opts.no_run:
            continue
        cpus = opts.cpu or [run.cpu for run in RUNS[target]]
        for cpu in cpus:
            run = find_run(target, cpu)
            need = missing_tools(target, run)
            if need:
                print(f"[{target} {cpu}] cannot run, missing: {'; '.join(need)}", file=sys.stderr)
                failures.append(f"{target} {cpu}: missing {run.emulator}")
                continue
            command, env = run_command(target, run, opts.filters)
            print(f"[{target} {cpu}] $ {shlex.join(command)}", file=sys.stderr, flush=True)
            started = time.monotonic()
            code = subprocess.run(command, env=env).returncode
            print(f"[{target} {cpu}] {describe_exit(code)} in {time.monotonic() - started:.1f}s",
                  file=sys.stderr, flush=True)
            if code != 0:
                failures.append(f"{target} {cpu}: {describe_exit(code)}")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
