"""A one-line progress bar for the terminal (plain periodic lines when not a terminal)."""
import os
import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_bytes(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


class Progress:
    """Progress through `total` steps (or bytes: `label` says what a count is)."""

    def __init__(self, total: int, start: int = 0, stream=None, width: int = 24, every: int = 50,
                 label=None, started: float | None = None):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.width, self.every = width, every
        self.label = label or (lambda step: f"step {step:>{len(str(total))}}/{total}")
        self.t0 = time.perf_counter() if started is None else started  # a perf_counter()
        self.last_len = 0
        self.last_draw = 0.0
        self.last_step = start

    def update(self, step: int, **fields):
        """Shows progress after `step` steps are done (fields: name -> formatted value);
        when not on a terminal, a line each time a multiple of `every` is passed."""
        now = time.perf_counter()
        if self.tty and now - self.last_draw < 0.1 and step != self.total:
            return  # redraw at most ten times a second
        self.last_draw = now
        passed = (step // self.every > self.last_step // self.every
                  or step == self.total != self.last_step)
        self.last_step = step
        done = step - self.start
        elapsed = now - self.t0
        left = elapsed / done * (self.total - step) if done > 0 else 0.0
        head = f"{self.label(step)} "
        tail = "".join(f" {k} {v} |" for k, v in fields.items())
        tail += f" {format_duration(elapsed)}<{format_duration(left)}"
        width = self.width
        if self.tty:  # a line longer than the terminal wraps, and \r returns to its end only
            room = self._columns() - 1
            width = max(8, min(width, room - len(head) - len(tail)))
        filled = int(width * step / max(1, self.total))
        line = head + "█" * filled + "░" * (width - filled) + tail
        if self.tty:
            line = line[:room]
            self.stream.write("\r" + line.ljust(self.last_len))
            self.last_len = len(line)
        elif passed:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _columns(self) -> int:
        """The width of the bar's own terminal (stdout may be a file meanwhile)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):
            return 80

    def message(self, text: str):
        """Prints a line of its own without breaking the bar."""
        if self.tty and self.last_len:
            self.stream.write("\r" + " " * self.last_len + "\r")
            self.last_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        """Ends the bar's line (once, however often it is called)."""
        if self.tty and self.last_len:
            self.stream.write("\n")
            self.stream.flush()
            self.last_len = 0


class LateProgress:
    """A Progress shown only once the work has taken `quiet_seconds` (most such work is
    over in a moment), begun again if the count goes back (the work started over), and
    ended, as a context manager, however the work ends. Called as progress(done, total);
    label(done, total) says what the count is; off a terminal it prints `lines` lines."""

    def __init__(self, label, quiet_seconds: float = 1.0, lines: int = 10):
        self.label, self.quiet_seconds, self.lines = label, quiet_seconds, lines
        self.started, self.bar = time.perf_counter(), None

    def __call__(self, done: int, total: int):
        if self.bar is not None and done < self.bar.last_step:
            self.close()
            self.started = time.perf_counter()
        if self.bar is None:
            if time.perf_counter() - self.started < self.quiet_seconds:
                return
            self.bar = Progress(total, every=max(1, total // self.lines), started=self.started,
                                label=lambda n: self.label(n, total))
        self.bar.update(min(done, total))

    def message(self, text: str):
        """Prints a line of its own (a warning, say) without breaking the bar."""
        if self.bar is not None:
            self.bar.message(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
