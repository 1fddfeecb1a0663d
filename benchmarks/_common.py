"""Shared plumbing for the benchmark scripts: arguments, timing, JSON and markdown output."""
import argparse
import json
import os
import platform
import time
from pathlib import Path


def parser(script: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few seconds' run, to check the script works")
    p.add_argument("--out", default=f"benchmarks/results/{script}.json", help="JSON output path")
    return p


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version()}


def best_time(fn, repeat: int = 5, min_time: float = 0.05) -> float:
    """Best seconds per call over `repeat` rounds (each at least min_time long)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best


def write(out: str, result: dict, table: str):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), **result}
    Path(out).write_text(json.dumps(result, indent=2))
    print(table)
    print(f"\n(JSON written to {out})")


def markdown(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
