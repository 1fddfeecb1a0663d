"""Builds the C++ extension tinylm._C.

Every file in csrc/ is compiled with -O3; each instruction-set file gets its own flags
(see build_isa.py), so one build runs on every CPU of its architecture and the kernels
pick their path at import time from what the CPU reports.
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_isa import CSRC, host_arch, kernel_sources  # noqa: E402

# -fno-trapping-math (clang's default) changes no result; it lets GCC vectorize loops
# with float comparisons in them (the SiLU's clamped exponential in csrc/engine/).
COMMON_FLAGS = ["-O3", "-std=c++17", "-fno-trapping-math", "-fvisibility=hidden", "-Wall",
                "-Wextra", "-Wno-unused-parameter"]


def rel(path):
    return os.path.relpath(path, os.path.dirname(os.path.abspath(__file__)))


def cores():
    """The cores this process may run on (a container's cpuset, taskset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stale(target, sources):
    """Whether target is missing or older than any of sources."""
    return not os.path.exists(target) or max(map(os.path.getmtime, sources)) > os.path.getmtime(target)


class BuildWithIsaFlags(build_ext):
    """Compiles the bindings and every kernel file, each with its own flags, one compiler
    per core at a time (a serial build took over a minute, three times in CI: x86, arm64
    and armhf), then links them."""

    def build_extension(self, ext):
        if not (self.force or stale(self.get_ext_fullpath(ext.name), ext.sources + ext.depends)):
            return super().build_extension(ext)  # up to date: it says so and skips
        units = [(source, ext.extra_compile_args) for source in ext.sources]
        units += [(rel(path), COMMON_FLAGS + ["-fPIC"] + flags) for path, flags in kernel_sources(host_arch())]
        macros = ext.define_macros + [(name,) for name in ext.undef_macros]

        def compile_unit(unit):
            source, flags = unit
            return self.compiler.compile([source], output_dir=self.build_temp, macros=macros,
                                         include_dirs=ext.include_dirs, debug=self.debug,
                                         extra_postargs=flags)

        with ThreadPoolExecutor(max_workers=self.parallel or cores()) as pool:
            objects = [obj for objs in pool.map(compile_unit, units) for obj in objs]
        sources, ext.sources, ext.extra_objects = ext.sources, [], objects
        try:
            super().build_extension(ext)  # links what was compiled above
        finally:
            ext.sources = sources


ext = Pybind11Extension(
    "tinylm._C",
    [rel(CSRC / "bindings.cpp")],
    include_dirs=[rel(CSRC)],
    # any kernel source or header: a change to one must relink the extension
    depends=[rel(p) for p in sorted(CSRC.rglob("*")) if p.suffix in (".cpp", ".h")],
    extra_compile_args=COMMON_FLAGS,
    extra_link_args=["-pthread"] if sys.platform != "darwin" else [],
    cxx_std=17,
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithIsaFlags})
