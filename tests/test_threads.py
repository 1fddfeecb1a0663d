"""The kernels' thread pool under a Python program's own threads."""
import re
import subprocess
import sys
import textwrap

import pytest

# One thread runs a kernel that releases the GIL, over and over, while another resizes the
# pool under it. Before the pool was shared by the jobs using it, set_num_threads deleted
# it mid-job and the program hung (or crashed) within a second.
RESIZE_DURING_KERNELS = textwrap.dedent("""
    import threading, time, traceback
    import numpy as np
    from tinylm import _C
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 256, 32)).astype(np.float32) for _ in range(3))
    want = _C.attention_forward(q, k, v)[0]
    stop, wrong, runs, failed = threading.Event(), [], [0], [0]
    def kernels():
        try:
            while not stop.is_set():
                wrong.append(not np.array_equal(_C.attention_forward(q, k, v)[0], want))
                runs[0] += 1
        except BaseException:
            failed[0] = 1
            traceback.print_exc()
    worker = threading.Thread(target=kernels, daemon=True)
    worker.start()
    # at least a second, 100 resizes and 20 kernel runs, however slow the machine
    resizes, end = 0, time.monotonic() + 1.0
    while worker.is_alive() and (time.monotonic() < end or resizes < 100 or runs[0] < 20):
        _C.set_num_threads(1 + resizes % 3)
        resizes += 1
    stop.set()
    worker.join()
    print(resizes, runs[0], sum(wrong), failed[0])
""")


def test_resizing_the_pool_while_another_thread_runs_kernels(tmp_path):
    # from tmp_path: `-c` puts the working directory first on sys.path, and a checkout's
    # tinylm/ there has no built extension
    out = subprocess.run([sys.executable, "-c", RESIZE_DURING_KERNELS], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    resizes, runs, wrong, failed = map(int, out.stdout.split())
    assert not failed, out.stderr  # the kernel thread's traceback
    assert resizes >= 100 and runs >= 20, (resizes, runs)
    assert wrong == 0


def test_a_thread_count_past_the_limit_is_refused_and_changes_nothing():
    from tinylm import _C
    before = _C.num_threads()
    with pytest.raises(ValueError, match=f"100000 threads is more than the {_C.MAX_THREADS} tinylm allows"):
        _C.set_num_threads(100000)
    assert _C.num_threads() == before
    with pytest.raises(ValueError, match="more than the"):
        _C.set_num_threads(_C.MAX_THREADS + 1)  # the first count past the limit


# Thread stacks take address space: with little left (as a 32-bit process has for a few
# hundred threads), starting the pool's threads fails part way. That used to hang the
# process (threads left running); now the ones started stop. The child's stacks are 8 MiB
# (RLIMIT_STACK, set before it starts), so 100 MiB holds about a dozen; it asks for the
# limit itself, which the limit check lets through.
FEW_STACKS = textwrap.dedent("""
    import resource
    from tinylm import _C
    _C.set_num_threads(1)
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (100 << 20), resource.RLIM_INFINITY))
    try:
        _C.set_num_threads(_C.MAX_THREADS)
    except RuntimeError as e:
        print("refused:", e)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("threads", _C.num_threads())
    _C.set_num_threads(2)
    print("threads", _C.num_threads())
""")


@pytest.mark.native  # (limits a process's address space: Linux, tinylm's platform, enforces it)
def test_threads_the_system_will_not_start_are_refused_and_change_nothing(tmp_path):
    import resource

    def eight_mib_stacks():
        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    proc = subprocess.run([sys.executable, "-c", FEW_STACKS], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, preexec_fn=eight_mib_stacks)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"refused: could not start 1024 threads: the system started (\d+) \(.*\); "
                        r"use at most \1", lines[0]), lines
    assert lines[1:] == ["threads 1", "threads 2"]
