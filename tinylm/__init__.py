"""tinylm: a from-scratch Super Tiny Language Model.

Train a byte-level, Llama-style transformer with numpy on a laptop CPU, then run it,
fp32 or int8, on a Raspberry Pi. Every layer's forward and backward is plain numpy that
a student can follow; the hot paths (attention, int8 matmul) are C++ kernels in
`tinylm._C`, held to the numpy reference by the tests.
"""

__version__ = "0.1.0"


def load(path, engine="native"):
    """Opens a model file (fp32 or int8, memory-mapped) for generation and research:

        model = tinylm.load("model.safetensors")
        for piece in model.generate("Once upon a time", max_tokens=100, seed=1):
            print(piece, end="", flush=True)
        logits = model.logits(model.tokenizer.encode("hello"))  # [T, vocab]

    engine="numpy" runs the readable reference engine instead of the native one.
    (Imported lazily, so `import tinylm` stays light.)
    """
    from .engine import load as _load
    return _load(path, engine)
