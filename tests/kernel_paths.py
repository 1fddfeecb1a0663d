"""Context managers the kernel tests use to run code on one instruction-set path, or
with one thread count, and put the previous setting back afterwards."""
import contextlib

from tinylm import _C


@contextlib.contextmanager
def isa(name):
    before = _C.active_isa()
    _C.set_isa(name)
    try:
        yield
    finally:
        _C.set_isa(before)


@contextlib.contextmanager
def threads(n):
    before = _C.num_threads()
    _C.set_num_threads(n)
    try:
        yield
    finally:
        _C.set_num_threads(before)
