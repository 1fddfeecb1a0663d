"""Builds the C++ extension tinylm._C.

Every file in csrc/ is compiled with -O3; each instruction-set file gets its own flags
(see build_isa.py), so one build runs on every CPU of its architecture and the kernels
pick their path at import time from what the CPU reports.
"""
import os
import sys

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


class BuildWithIsaFlags(build_ext):
    """Compiles each kernel file with its own flags, then links them with the bindings."""

    def build_extension(self, ext):
        objects = []
        for path, flags in kernel_sources(host_arch()):
            objects += self.compiler.compile(
                [rel(path)],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                extra_postargs=COMMON_FLAGS + ["-fPIC"] + flags,
            )
        ext.extra_objects = objects
        super().build_extension(ext)


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
