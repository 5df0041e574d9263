#!/usr/bin/env python3
"""Reads a Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx) with numpy alone, from the
format's description, independently of the writer.

Usage: python3 tests/python/read_megatron.py PREFIX

The index: magic b"MMIDIDX\\x00\\x00", version (u64, 1), dtype code (u8), sequence count S (u64),
document index count D (u64), then S int32 sequence lengths, S int64 byte offsets into the .bin
file, and D int64 document indices (document d = sequences [idx[d], idx[d+1])). All
little-endian.

Checks that the offsets tile the .bin file exactly and that the document indices run from 0 to S
without going back, then prints one JSON object: dtype, sequences (every sequence's ids) and
document_indices. Exits 1 with a message on stderr when the files break the format.
"""

import json
import os
import struct
import sys

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}


def fail(message):
    print(f"read_megatron.py: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: read_megatron.py PREFIX")
    prefix = sys.argv[1]
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    with open(idx_path, "rb") as f:
        index = f.read()
    head = struct.Struct("<9sQBQQ")
    if len(index) < head.size:
        fail(f"{idx_path}: {len(index)} bytes, shorter than the header")
    magic, version, code, sequences, documents = head.unpack_from(index)
    if magic != MAGIC:
        fail(f"{idx_path}: magic {magic!r}, expected {MAGIC!r}")
    if version != 1:
        fail(f"{idx_path}: version {version}, expected 1")
    if code not in DTYPES:
        fail(f"{idx_path}: unknown dtype code {code}")
    dtype = np.dtype(DTYPES[code]).newbyteorder("<")
    need = head.size + sequences * 4 + sequences * 8 + documents * 8
    if len(index) != need:
        fail(f"{idx_path}: {len(index)} bytes, the header implies {need}")
    at = head.size
    lengths = np.frombuffer(index, dtype="<i4", count=sequences, offset=at)
    at += sequences * 4
    pointers = np.frombuffer(index, dtype="<i8", count=sequences, offset=at)
    at += sequences * 8
    doc_idx = np.frombuffer(index, dtype="<i8", count=documents, offset=at)

    data = np.memmap(bin_path, dtype=dtype, mode="r") if os.path.getsize(bin_path) else None
    expected = 0
    out = []
    for i, (length, pointer) in enumerate(zip(lengths.tolist(), pointers.tolist())):
        if pointer != expected:
            fail(f"{idx_path}: sequence {i} starts at byte {pointer}, expected {expected}")
        start = pointer // dtype.itemsize
        out.append(data[start : start + length].tolist() if length else [])
        expected += length * dtype.itemsize
    if os.path.getsize(bin_path) != expected:
        fail(f"{bin_path}: {os.path.getsize(bin_path)} bytes, the index accounts for {expected}")
    docs = doc_idx.tolist()
    if not docs or docs[0] != 0 or docs[-1] != sequences or any(
        b < a for a, b in zip(docs, docs[1:])
    ):
        fail(f"{idx_path}: document indices {docs[:5]}... do not run from 0 to {sequences}")
    print(json.dumps({"dtype": dtype.name, "sequences": out, "document_indices": docs}))


if __name__ == "__main__":
    main()
