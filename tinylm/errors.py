"""The one exception type the command line turns into a one-line message."""


class TinylmError(ValueError):
    """A problem with what the user asked for or gave us (a bad flag, corpus or file).

    Its message says what is wrong and how to fix it; `tinylm` prints it without a
    traceback. Anything else that escapes is a bug and keeps its traceback.
    """
