#!/usr/bin/env python3
"""Reads a redpack corpus with nothing but numpy and pyarrow, following schemas/README.md.

Usage: python3 tests/python/read_corpus.py CORPUS_DIR

Prints one JSON object on stdout: the manifest's kind and dtype, and per shard the header fields,
every token id (via numpy.memmap), every index column (via pyarrow.ipc.open_file), and whether the
sha256 of each file matches the manifest. The Rust test compares it with what the writer wrote, so
this script is the proof that the format can be read from another language with the spec alone.
Exits 1 with a message on stderr when the corpus breaks the spec.
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np
import pyarrow.ipc

MAGIC = b"RPTOKENS"
HEADER = struct.Struct("<8sIIQ8s")  # magic, version, width, token count, reserved


def fail(message):
    print(f"read_corpus.py: {message}", file=sys.stderr)
    sys.exit(1)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_shard(directory, entry, dtype, header_bytes):
    tokens_path = os.path.join(directory, entry["tokens_file"])
    with open(tokens_path, "rb") as f:
        magic, version, width, count, reserved = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        fail(f"{tokens_path}: wrong magic {magic!r}")
    if version != 1:
        fail(f"{tokens_path}: unsupported version {version}")
    if width != np.dtype(dtype).itemsize:
        fail(f"{tokens_path}: width {width} disagrees with manifest dtype {dtype}")
    if count != entry["tokens"]:
        fail(f"{tokens_path}: header count {count} != manifest {entry['tokens']}")
    if count:
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r", offset=header_bytes, shape=(count,))
    else:
        tokens = np.zeros(0, dtype=dtype)

    index_path = os.path.join(directory, entry["index_file"])
    with pyarrow.ipc.open_file(index_path) as reader:
        table = reader.read_all()
        version_key = reader.schema.metadata.get(b"redpack.format_version")
    columns = {}
    for name in ("offset", "length", "prefix_len", "source", "doc_starts", "origin"):
        # to_pylist turns the dictionary-encoded `source` into plain strings.
        columns[name] = table.column(name).to_pylist()

    examples = []
    for offset, length, prefix_len, source, doc_starts, origin in zip(
        *(columns[n] for n in ("offset", "length", "prefix_len", "source", "doc_starts", "origin"))
    ):
        if offset + length > count:
            fail(f"{index_path}: example at {offset}+{length} runs past {count} tokens")
        examples.append(
            {
                "tokens": tokens[offset : offset + length].astype(np.int64).tolist(),
                "prefix_len": prefix_len,
                "source": source,
                "doc_starts": doc_starts,
                "origin": origin,
            }
        )
    return {
        "tokens_file": entry["tokens_file"],
        "header": {"version": version, "width": width, "tokens": count, "reserved_zero": reserved == bytes(8)},
        "index_format_version": version_key.decode() if version_key else None,
        "index_types": {f.name: str(f.type) for f in table.schema},
        "columns": {n: columns[n] for n in ("offset", "length", "prefix_len")},
        "sha256_ok": sha256(tokens_path) == entry["tokens_sha256"]
        and sha256(index_path) == entry["index_sha256"],
        "examples": examples,
    }


def main():
    if len(sys.argv) != 2:
        fail("usage: read_corpus.py CORPUS_DIR")
    directory = sys.argv[1]
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != "redpack-corpus" or manifest.get("format_version") != 1:
        fail(f"{directory}: not a version-1 redpack corpus")
    dtype = {"u16": "<u2", "u32": "<u4"}[manifest["token_dtype"]]
    shards = [read_shard(directory, e, dtype, manifest["header_bytes"]) for e in manifest["shards"]]
    json.dump(
        {
            "kind": manifest["kind"],
            "token_dtype": manifest["token_dtype"],
            "header_bytes": manifest["header_bytes"],
            "counts": manifest["counts"],
            "shards": shards,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
