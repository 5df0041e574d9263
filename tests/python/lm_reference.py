#!/usr/bin/env python3
"""An independent reference for the log-likelihoods `redpack_trainer::generate` computes, with
numpy only: the float64 forward pass of `eval_reference.py` (which reads the checkpoint's
safetensors and `checkpoint.json` by hand; no redpack code), applied to requests.

Usage: python3 tests/python/lm_reference.py CHECKPOINT_DIR REQUESTS.json

REQUESTS.json is a list of `{"context": [ids], "continuation": [ids]}`. For each request the row
`context + continuation` is scored from k = len(context): DecLLM reads it causally (with the
context bidirectional for a DecLLM + BiAttn checkpoint), RedLLM encodes the context and decodes
the continuation. An empty context reads as the end-of-document id. Prints a JSON list: per
request, the sum over the continuation of ln p(token | everything before it).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_reference import Model, np  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    checkpoint, requests_path = sys.argv[1], sys.argv[2]
    model = Model(checkpoint)
    with open(os.path.join(checkpoint, "checkpoint.json"), encoding="utf-8") as f:
        eod = json.load(f)["tokenizer"]["eod_id"]
    with open(requests_path, encoding="utf-8") as f:
        requests = json.load(f)
    out = []
    for r in requests:
        context = r["context"] or [eod]
        row = np.asarray(context + r["continuation"], dtype=np.int64)
        ce = model.token_losses(row, [], len(context))
        out.append(-float(ce.sum()))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
