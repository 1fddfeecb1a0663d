"""What the decode path's own rounding costs a trained model: next-token loss over
validation windows, every prediction made by a one-token decode step of the engine.

`tinylm eval` scores with the training forward pass (int8 products included), which
never touches the KV cache; generation reads the cache at every step. So this script
runs each window as generation does: the first token prefilled, then one native decode
step per token, scoring each step's logits against the next token of the text. Run it
on an fp32 model and its int8 copy (and on two builds of tinylm, to compare their
caches: int8 keys against float16 ones).

    python benchmarks/decode_loss.py runs/baby/model.safetensors runs/baby/model-int8.safetensors
    python benchmarks/decode_loss.py --quick             # random `tiny` models, a few windows
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def decode_loss(model, tokens, windows):
    """Mean nats/token of decode-step predictions over `windows` evenly spaced windows
    of one context each."""
    C = model.cfg.context
    starts = np.linspace(0, len(tokens) - C - 1, windows).astype(np.int64)
    engine, total, count = model.engine, 0.0, 0
    for s in starts:
        ids = tokens[s:s + C + 1]
        engine.reset()
        logits = engine.prefill(ids[:1])
        for t in range(1, C + 1):
            z = logits.astype(np.float64)
            z -= z.max()
            total += np.log(np.exp(z).sum()) - z[ids[t]]
            count += 1
            if t < C:
                logits = engine.step(int(ids[t]))
    return total / count, count


def random_models(directory):
    from tinylm.config import preset
    from tinylm.model import init_params
    from tinylm.modelfile import save_model
    from tinylm.quant import quantize_file
    from tinylm.tokenizer import ByteTokenizer
    fp32 = os.path.join(directory, "tiny.safetensors")
    int8 = os.path.join(directory, "tiny-int8.safetensors")
    save_model(fp32, preset("tiny"), init_params(preset("tiny"), seed=0), ByteTokenizer())
    quantize_file(fp32, int8)
    return [fp32, int8]


def main():
    import _common as common
    p = common.parser("decode_loss", __doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model files (.safetensors)")
    p.add_argument("--data", default=None, help="corpus (default: the Python standard library, "
                   "as `tinylm train` and `tinylm eval` use it)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="as `tinylm eval`'s")
    p.add_argument("--windows", type=int, default=300, help="windows of one context each")
    args = p.parse_args()
    import tinylm
    from tinylm import data
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models
        if args.quick:
            models, args.windows = random_models(tmp), 4
            corpus = Path(tmp, "corpus.txt")
            corpus.write_text(Path(__file__).read_text() * 4)
            args.data = str(corpus)
        if not models:
            p.error("give one or more model files (or --quick)")
        source = data.DEFAULT_SOURCE if args.data is None else args.data
        for path in models:
            model = tinylm.load(path)
            tokens = data.load_tokens(source, model.tokenizer)
            val = np.asarray(data.split_tokens(tokens, model.tokenizer, model.cfg.context,
                                               args.val_fraction).val)
            nats, count = decode_loss(model, val, args.windows)
            results.append(dict(model=str(path), weights=model.weights, nats_per_token=nats,
                                predictions=count, tinylm=os.path.dirname(tinylm.__file__)))
            rows.append([path, model.weights, f"{nats:.5f}", f"{count:,}"])
    header = ["model", "weights", "decode-step loss, nats/token", "predictions"]
    table = common.markdown(header, rows)
    common.write(args.out, {"windows": args.windows, "results": results}, table)


if __name__ == "__main__":
    main()
