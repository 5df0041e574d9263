"""Independent cross-check of a packed redpack corpus with the Python `tokenizers` package.

Usage: check_tokens.py CORPUS_DIR TOKENIZER_JSON DOCS_JSONL...

Reads the corpus with numpy alone (manifest.json, then each token file at its header offset)
and checks that the concatenated token stream starts with, for every document of the JSONL
files in order, its encoding followed by the corpus's end-of-document id, and that anything
after that is padding. Exits 1 with the first mismatch otherwise.
"""

import json
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def main() -> int:
    corpus, tokenizer_path, *docs = sys.argv[1:]
    corpus = Path(corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    dtype = {"u16": np.uint16, "u32": np.uint32}[manifest["token_dtype"]]
    header = manifest["header_bytes"]
    stream = np.concatenate(
        [
            np.memmap(corpus / shard["tokens_file"], dtype=dtype, mode="r", offset=header)
            for shard in manifest["shards"]
        ]
    ).astype(np.int64)

    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.encode_special_tokens = True
    eod = manifest["tokenizer"]["eod_id"]
    pad = manifest["tokenizer"]["pad_id"]
    expected = []
    documents = 0
    for path in docs:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            expected.extend(tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids)
            expected.append(eod)
            documents += 1
    expected = np.asarray(expected, dtype=np.int64)
    if len(stream) < len(expected):
        print(f"corpus holds {len(stream)} tokens, expected at least {len(expected)}")
        return 1
    head = stream[: len(expected)]
    if not np.array_equal(head, expected):
        first = int(np.flatnonzero(head != expected)[0])
        print(f"token {first} differs: corpus {head[first]}, tokenizers {expected[first]}")
        return 1
    if not np.all(stream[len(expected) :] == pad):
        print("tokens after the last document are not all padding")
        return 1
    print(f"ok: {documents} documents, {len(expected)} tokens match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
