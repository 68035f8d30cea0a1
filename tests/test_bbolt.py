"""The bbolt writer and reader (k8s_sql.snapshot.bbolt).

Round trips through our own reader, and the same files read by real bbolt: ``etcdctl
snapshot status`` (Debian's etcd-client 3.4) opens a file with go.etcd.io/bbolt, runs its
consistency check (every page reachable or free, page types, overflow) and walks every
bucket; its CRC-32C over bucket names, keys and values must equal ours, computed from what
we wrote. Nothing is stood in.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import google_crc32c
import pytest

from k8s_sql.snapshot import bbolt
from k8s_sql.snapshot.bbolt import BoltError, Reader, Writer

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def write(path, buckets: dict) -> int:
    """Write ``buckets`` ({name: {key: value or dict (a sub-bucket)}}) to ``path``; return the size."""
    def fill(b, items):
        for k in sorted(items):
            v = items[k]
            if isinstance(v, dict):
                with b.bucket(k) as sub:
                    fill(sub, v)
            else:
                b.put(k, v)
    with open(path, "wb") as f:
        w = Writer(f)
        for name in sorted(buckets):
            with w.bucket(name) as b:
                fill(b, buckets[name])
        return w.close()


def read(reader: Reader, *path: bytes) -> dict:
    out = {k: v for k, v in reader.items(*path)}
    for name in reader.buckets(*path):
        out[name] = read(reader, *path, name)
    return out


def status(path) -> dict:
    """``etcdctl snapshot status`` of ``path`` (real bbolt: open, tx.Check, walk) as JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "3"
    r = subprocess.run([ETCDCTL, "snapshot", "status", str(path), "-w", "json"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def expected_status(buckets: dict) -> tuple[int, int]:
    """(hash, totalKey) as etcd's snapshot status computes them: CRC-32C over each top-level
    bucket's name, then each key and value (a sub-bucket: its name, no value), in order."""
    h, n = 0, 0
    for name in sorted(buckets):
        h = google_crc32c.extend(h, name)
        for k in sorted(buckets[name]):
            v = buckets[name][k]
            h = google_crc32c.extend(google_crc32c.extend(h, k), b"" if isinstance(v, dict) else v)
            n += 1
    return h, n


def bucket_root(reader: Reader, name: bytes) -> tuple[int, bytes]:
    """(root page id, raw bucket value) of top-level bucket ``name``."""
    for flags, key, value in reader._items(None):
        if key == name:
            return struct.unpack_from("<Q", value)[0], value
    raise KeyError(name)


def depth(reader: Reader, page: int) -> int:
    """Levels of the tree at ``page`` (1 = a single leaf), following first children."""
    levels = 1
    while True:
        off, flags, count, _ = reader._page(page)
        if flags == bbolt.LEAF_PAGE:
            return levels
        page = struct.unpack_from("<IIQ", reader.data, off + 16)[2]
        levels += 1


def test_round_trip_nested_empty_and_binary(tmp_path):
    content = {
        b"alarm": {},
        b"binary": {bytes([i, 255 - i, 0]): os.urandom(i) for i in range(1, 200)},
        b"nested": {b"a": b"1", b"child": {b"x": b"y", b"grandchild": {b"deep": b"!"}}, b"z": b""},
    }
    path = tmp_path / "t.db"
    size = write(path, content)
    assert size == os.path.getsize(path) and size % 4096 == 0
    r = Reader.open(path)
    assert r.buckets() == [b"alarm", b"binary", b"nested"]
    assert read(r) == {b"alarm": {}, **{k: v for k, v in content.items() if k != b"alarm"}}
    st = status(path)
    assert (st["hash"], st["totalKey"]) == expected_status(content)
    assert st["totalSize"] == size


def test_many_keys_make_several_branch_levels(tmp_path):
    items = {struct.pack(">Q", i) + b"_" + bytes(8): b"v%d" % i for i in range(60_000)}
    path = tmp_path / "many.db"
    write(path, {b"many": items})
    r = Reader.open(path)
    assert list(r.items(b"many")) == sorted(items.items())
    root, _ = bucket_root(r, b"many")
    assert depth(r, root) >= 3  # leaves, branches of leaves, a branch of branches
    st = status(path)
    assert (st["hash"], st["totalKey"]) == expected_status({b"many": items})


def test_large_values_use_overflow_pages(tmp_path):
    items = {b"a": b"small", b"b": os.urandom(50_000), b"c": b"x" * 4090, b"d": os.urandom(4096 * 3), b"e": b""}
    path = tmp_path / "big.db"
    write(path, {b"big": items})
    r = Reader.open(path)
    assert dict(r.items(b"big")) == items
    overflows, p = [], 2
    while p < r.meta.pgid:  # pages in file order; an overflowing page spans the next ones
        overflow = r._page(p)[3]
        overflows.append(overflow)
        p += overflow + 1
    assert max(overflows) >= 12  # the 50,000-byte value spans 13 pages
    st = status(path)
    assert (st["hash"], st["totalKey"]) == expected_status({b"big": items})


def test_buckets_are_inline_where_bbolt_inlines_them(tmp_path):
    # bbolt inlines a bucket whose one leaf has no sub-bucket and takes <= page_size / 4 bytes
    fits = {b"k%02d" % i: b"v" * 20 for i in range(24)}  # 16 + 24 * (16 + 3 + 20) = 952
    too_big = {b"k%02d" % i: b"v" * 20 for i in range(27)}  # 16 + 27 * 39 = 1069
    path = tmp_path / "inline.db"
    write(path, {b"empty": {}, b"fits": fits, b"too_big": too_big, b"parent": {b"child": {}}})
    r = Reader.open(path)
    for name, inline in ((b"empty", True), (b"fits", True), (b"too_big", False), (b"parent", False)):
        assert (bucket_root(r, name)[0] == 0) == inline, name
    empty_value = bucket_root(r, b"empty")[1]
    assert empty_value == struct.pack("<QQ", 0, 0) + struct.pack("<QHHI", 0, bbolt.LEAF_PAGE, 0, 0)
    assert read(r, b"parent") == {b"child": {}}
    status(path)


def test_meta_pages_and_freelist(tmp_path):
    path = tmp_path / "m.db"
    size = write(path, {b"b": {b"k": b"v"}})
    data = path.read_bytes()
    for page_id, txid in ((0, 2), (1, 1)):
        off = page_id * 4096
        assert struct.unpack_from("<QHHI", data, off) == (page_id, bbolt.META_PAGE, 0, 0)
        magic, version, page_size, _, _, _, freelist, pgid, got_txid, checksum = struct.unpack_from(
            "<IIIIQQQQQQ", data, off + 16)
        assert (magic, version, page_size, pgid, got_txid) == (0xED0CDAED, 2, 4096, size // 4096, txid)
        assert checksum == bbolt.fnv1a64(data[off + 16:off + 72])
    assert Reader(data).free_pages() == []


def test_writer_refuses_unordered_or_empty_keys(tmp_path):
    with open(tmp_path / "x.db", "wb") as f:
        w = Writer(f)
        b = w.bucket(b"b")
        b.put(b"b", b"1")
        with pytest.raises(BoltError, match="out of order"):
            b.put(b"a", b"2")
        with pytest.raises(BoltError, match="out of order"):
            b.put(b"b", b"again")
        with pytest.raises(BoltError, match="empty key"):
            b.put(b"", b"x")
        b.close()
        with pytest.raises(BoltError, match="out of order"):
            w.bucket(b"a")


def test_reader_refuses_damaged_files(tmp_path):
    path = tmp_path / "d.db"
    write(path, {b"b": {b"k%04d" % i: b"v" * 100 for i in range(500)}})
    good = path.read_bytes()

    one_meta = bytearray(good)
    one_meta[16 + 40] ^= 1  # meta 0's txid: its checksum no longer matches, meta 1 is used
    assert Reader(bytes(one_meta)).meta.txid == 1

    both_metas = bytearray(one_meta)
    both_metas[4096 + 16 + 40] ^= 1
    with pytest.raises(BoltError, match="checksum"):
        Reader(bytes(both_metas))

    with pytest.raises(BoltError, match="truncated"):
        Reader(good[:len(good) - 4096])

    wrong_id = bytearray(good)
    wrong_id[2 * 4096] ^= 0x7F  # page 2's header id
    with pytest.raises(BoltError, match="page 2: header says"):
        Reader(bytes(wrong_id))

    with pytest.raises(BoltError, match="magic"):
        Reader(bytes(8192))

    # a leaf whose keys are out of order (swap the first two elements of page 2)
    swapped = bytearray(good)
    e0, e1 = 2 * 4096 + 16, 2 * 4096 + 32
    a, b = bytes(swapped[e0:e0 + 16]), bytes(swapped[e1:e1 + 16])
    fa, pa, ka, va = struct.unpack("<IIII", a)
    fb, pb, kb, vb = struct.unpack("<IIII", b)
    swapped[e0:e0 + 16] = struct.pack("<IIII", fb, pb + 16, kb, vb)
    swapped[e1:e1 + 16] = struct.pack("<IIII", fa, pa - 16, ka, va)
    with pytest.raises(BoltError, match="out of order"):
        Reader(bytes(swapped))


def test_two_pass_layout_streams_the_same_file(tmp_path):
    """Laid out once without output, then written front to back with the metas of the
    first pass (how the shim streams a snapshot without a temporary file): the same bytes
    as a seekable write; a second pass with other content is refused."""
    import io

    def fill(w, extra=b""):
        with w.bucket(b"b") as b:
            for i in range(3000):
                b.put(b"k%05d" % i, b"v" * (i % 300) + extra)
        return w.close()

    seekable = io.BytesIO()
    fill(Writer(seekable))
    layout = Writer(None)
    size = fill(layout)

    class Stream:  # write-only, like a gRPC stream
        def __init__(self):
            self.parts = []

        def write(self, data):
            self.parts.append(bytes(data))

        def flush(self):
            pass

    out = Stream()
    assert fill(Writer(out, metas=layout.metas)) == size
    assert b"".join(out.parts) == seekable.getvalue()
    with pytest.raises(BoltError, match="differs"):
        fill(Writer(Stream(), metas=layout.metas), extra=b"!")
