"""tinylm: a from-scratch Super Tiny Language Model.

Train a byte-level, Llama-style transformer with numpy on a laptop CPU, then run it,
fp32 or int8, on a Raspberry Pi. Every layer's forward and backward is plain numpy that
a student can follow; the hot paths (attention, int8 matmul) are C++ kernels in
`tinylm._C`, held to the numpy reference by the tests.
"""

__version__ = "0.1.0"
