"""The smallest writer and a checking reader of bbolt files (go.etcd.io/bbolt 1.3, file format
version 2), the B+tree store etcd keeps its backend in.

Format (bbolt's page layout; all integers little-endian):

- The file is an array of pages of ``page_size`` bytes; page N starts at N * page_size. A page
  starts with a 16-byte header: id (u64), flags (u16: branch 0x01, leaf 0x02, meta 0x04,
  freelist 0x10), count (u16, elements), overflow (u32: how many more pages it spans).
- Pages 0 and 1 are meta pages: after the header, magic 0xED0CDAED (u32), version 2 (u32),
  page_size (u32), flags (u32), the root bucket (root page id u64, sequence u64), the
  freelist page id (u64), pgid (u64: the high-water mark, pages in use), txid (u64) and a
  checksum (u64) = FNV-1a 64 of the 56 bytes before it. The valid meta with the higher
  txid is the current one.
- A freelist page lists free page ids (u64 each; count 0xFFFF means the first u64 is the
  count). Freelist id 0xFFFFFFFFFFFFFFFF means none is stored (etcd 3.4 runs bbolt so):
  then every page not in use is free.
- Branch elements are (pos u32, ksize u32, child page id u64), leaf elements are (flags u32,
  pos u32, ksize u32, vsize u32), 16 bytes each, right after the header; ``pos`` is the
  distance from the element itself to its key (a leaf's value follows its key).
- A leaf element with flag 0x01 is a bucket: its value is a bucket header (root page id u64,
  sequence u64). Root 0 means an inline bucket: a leaf page (header and elements) follows
  the header in the value itself. bbolt inlines a bucket whose root is one leaf without
  sub-buckets whose page would take at most a quarter of a page; the writer does the same.
- The root bucket (in the meta) holds the top-level buckets.

The writer builds each bucket's tree bottom-up from keys given in ascending order, filling
pages up to the page size (a single element larger than a page gets overflow pages), so
it streams: memory holds one page per tree level. The reader maps the file and checks
what ``bbolt check`` checks (meta checksums, page ids and types, key order, every page
below the high-water mark either reachable once or free) before it answers.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2
BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
#: Meta freelist value when the freelist is not stored (bbolt NoFreelistSync, as etcd 3.4
#: opens its backend): every page below the high-water mark not in use is free.
NO_FREELIST = 0xFFFFFFFFFFFFFFFF

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_BRANCH_ELEM = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF_ELEM = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET = struct.Struct("<QQ")  # root, sequence
_META = struct.Struct("<IIIIQQQQQQ")  # magic, version, page_size, flags, root, sequence, freelist, pgid, txid, checksum
HEADER_SIZE = _PAGE_HEADER.size
ELEMENT_SIZE = 16


class BoltError(ValueError):
    """The file is not a valid bbolt database (the message says which page and what)."""


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bit (bbolt's meta checksum)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & NO_FREELIST
    return h


@dataclass(frozen=True)
class Meta:
    """A decoded meta page: ``root`` is the root bucket's page, ``pgid`` the high-water mark."""

    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int


def _meta_bytes(m: Meta, page_id: int) -> bytes:
    body = _META.pack(MAGIC, VERSION, m.page_size, m.flags, m.root, m.sequence, m.freelist, m.pgid, m.txid, 0)
    body = body[:56] + struct.pack("<Q", fnv1a64(body[:56]))
    page = _PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + body
    return page + bytes(m.page_size - len(page))


def _parse_meta(buf, offset: int) -> Meta:
    if len(buf) < offset + HEADER_SIZE + _META.size:
        raise BoltError("file too small for a meta page")
    fields = _META.unpack_from(buf, offset + HEADER_SIZE)
    magic, version, page_size, flags, root, seq, freelist, pgid, txid, checksum = fields
    if magic != MAGIC:
        raise BoltError("invalid database (bad magic)")
    if version != VERSION:
        raise BoltError(f"version mismatch (file format {version}, expected {VERSION})")
    want = fnv1a64(bytes(buf[offset + HEADER_SIZE:offset + HEADER_SIZE + 56]))
    if checksum != want:
        raise BoltError("meta checksum error")
    if page_size < 512 or page_size & (page_size - 1) or pgid < 3 or not 2 <= root < pgid:
        raise BoltError(f"meta page: page size {page_size}, high-water mark {pgid}, root {root} are not a "
                        "database's")
    return Meta(page_size, flags, root, seq, freelist, pgid, txid)


# --- writing ---

def _leaf_page(entries: list[tuple[int, bytes, bytes]], page_id: int = 0) -> bytes:
    """Header + elements + data of a leaf page (without padding); ``entries`` are (flags, key, value)."""
    elems, data = bytearray(), bytearray()
    n = len(entries)
    for i, (flags, key, value) in enumerate(entries):
        pos = (n - i) * ELEMENT_SIZE + len(data)
        elems += _LEAF_ELEM.pack(flags, pos, len(key), len(value))
        data += key
        data += value
    return _PAGE_HEADER.pack(page_id, LEAF_PAGE, n, 0) + bytes(elems) + bytes(data)


def _branch_page(entries: list[tuple[bytes, int]], page_id: int) -> bytes:
    """A branch page (without padding); ``entries`` are (first key of the child, child page id)."""
    elems, data = bytearray(), bytearray()
    n = len(entries)
    for i, (key, child) in enumerate(entries):
        elems += _BRANCH_ELEM.pack((n - i) * ELEMENT_SIZE + len(data), len(key), child)
        data += key
    return _PAGE_HEADER.pack(page_id, BRANCH_PAGE, n, 0) + bytes(elems) + bytes(data)


class _Level:
    __slots__ = ("entries", "size", "flushed")

    def __init__(self):
        self.entries: list = []
        self.size = HEADER_SIZE
        self.flushed = False


class BucketWriter:
    """Puts into one bucket being written; keys strictly ascending (bytewise), as bbolt keeps them.

    Get one from :meth:`Writer.bucket` or :meth:`BucketWriter.bucket`; call :meth:`close`
    (or use it as a context manager) before the next key of its parent.
    """

    def __init__(self, writer: "Writer", parent: "BucketWriter | None", name: bytes, inline: bool = True):
        self._w = writer
        self._parent = parent
        self._name = name
        self._inline = inline
        self._levels = [_Level()]
        self._last: bytes | None = None
        self._has_buckets = False
        self._child: BucketWriter | None = None
        self._closed = False

    def __enter__(self) -> "BucketWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()

    def _check_key(self, key: bytes) -> None:
        if self._closed:
            raise BoltError("bucket already closed")
        if self._child is not None:
            raise BoltError("a sub-bucket is still open")
        if not key:
            raise BoltError("empty key (bbolt requires a key)")
        if self._last is not None and key <= self._last:
            raise BoltError(f"keys out of order: {key!r} after {self._last!r}")
        self._last = bytes(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Add ``key`` = ``value``. Raises BoltError when ``key`` is empty or not above the previous one."""
        self._check_key(key)
        self._add(0, 0, bytes(key), bytes(value))

    def bucket(self, name: bytes) -> "BucketWriter":
        """Open sub-bucket ``name`` (ordered among this bucket's keys); close it before the next put."""
        self._check_key(name)
        self._child = BucketWriter(self._w, self, bytes(name))
        return self._child

    def _add(self, level: int, flags: int, key: bytes, value) -> None:
        if level == len(self._levels):
            self._levels.append(_Level())
        lv = self._levels[level]
        size = ELEMENT_SIZE + len(key) + (len(value) if level == 0 else 0)
        if lv.entries and lv.size + size > self._w.page_size:
            self._flush(level)
        lv.entries.append((flags, key, value) if level == 0 else (key, value))
        lv.size += size

    def _flush(self, level: int) -> None:
        lv = self._levels[level]
        pid = self._w._next
        if level == 0:
            page = _leaf_page(lv.entries, pid)
            first = lv.entries[0][1] if lv.entries else b""
        else:
            page = _branch_page(lv.entries, pid)
            first = lv.entries[0][0]
        self._w._write_page(page)
        lv.entries, lv.size, lv.flushed = [], HEADER_SIZE, True
        self._add(level + 1, 0, first, pid)

    def _bucket_value(self) -> bytes:
        """Write what is left and return this bucket's value (header, and the inline page if inline)."""
        leaf = self._levels[0]
        if (self._inline and len(self._levels) == 1 and not leaf.flushed and not self._has_buckets
                and leaf.size <= self._w.page_size // 4):
            page = _leaf_page(leaf.entries)
            return _BUCKET.pack(0, 0) + page
        level = 0
        while True:
            lv = self._levels[level]
            if level > 0 and not lv.flushed and len(lv.entries) == 1:
                return _BUCKET.pack(lv.entries[0][1], 0)
            self._flush(level)
            level += 1

    def close(self) -> None:
        """Finish the bucket and enter it into its parent (the root bucket for a top-level one)."""
        if self._closed:
            return
        if self._child is not None:
            self._child.close()
        value = self._bucket_value()
        self._closed = True
        if self._parent is not None:
            self._parent._child = None
            self._parent._has_buckets = True
            self._parent._add(0, BUCKET_LEAF_FLAG, self._name, value)


class _Discard:
    def write(self, data) -> None:
        pass

    def seek(self, pos: int) -> None:
        pass

    def flush(self) -> None:
        pass


class Writer:
    """Write a bbolt database to ``f``.

    ``bucket(name)`` opens a top-level bucket (names ascending); :meth:`close` writes the
    root bucket, an empty freelist and both meta pages and returns the file size in bytes
    (pages × ``page_size``). The meta pages get txids 2 (page 0) and 1 (page 1), bbolt's
    convention that page ``txid % 2`` holds a transaction's meta.

    The metas come first in the file but are known only at the end, so either ``f`` is a
    seekable binary file (the metas are written last, at its start), or the file is laid
    out twice from the same puts: once with ``f`` None (nothing is written; :attr:`metas`
    holds the two meta pages after :meth:`close`), then with ``f`` any object with
    ``write`` and those ``metas``, which are written first, so the file streams in order.
    Raises BoltError at :meth:`close` when the second layout differs from the first.
    """

    def __init__(self, f: BinaryIO | None, page_size: int = PAGE_SIZE, metas: bytes | None = None):
        if page_size < 1024 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size}: must be a power of two >= 1024")
        self.f = f if f is not None else _Discard()
        self.page_size = page_size
        self._next = 2
        self._root = BucketWriter(self, None, b"", inline=False)
        self._given = metas
        self.metas: bytes | None = None
        if metas is not None:
            if len(metas) != 2 * page_size:
                raise ValueError("metas must be the two meta pages")
            self.f.write(metas)
        else:
            self.f.seek(2 * page_size)

    def _write_page(self, page: bytes) -> int:
        pid = self._next
        pages = max(1, -(-len(page) // self.page_size))
        if pages > 1:  # the overflow count lives in the header
            page = _PAGE_HEADER.pack(pid, struct.unpack_from("<H", page, 8)[0],
                                     struct.unpack_from("<H", page, 10)[0], pages - 1) + page[HEADER_SIZE:]
        self.f.write(page)
        self.f.write(bytes(pages * self.page_size - len(page)))
        self._next += pages
        return pid

    def bucket(self, name: bytes) -> BucketWriter:
        """Open top-level bucket ``name``. Raises BoltError when not above the previous name."""
        return self._root.bucket(name)

    def close(self) -> int:
        """Write the root, the freelist and the metas; return the file size in bytes."""
        root_value = self._root._bucket_value()
        root = _BUCKET.unpack_from(root_value)[0]
        freelist = self._write_page(_PAGE_HEADER.pack(self._next, FREELIST_PAGE, 0, 0))
        end = self._next
        self.metas = b"".join(_meta_bytes(Meta(self.page_size, 0, root, 0, freelist, end, txid), page_id)
                              for page_id, txid in ((0, 2), (1, 1)))
        if self._given is not None:
            if self.metas != self._given:
                raise BoltError("the second layout differs from the first (the content changed between them)")
        else:
            self.f.seek(0)
            self.f.write(self.metas)
            self.f.seek(end * self.page_size)
        self.f.flush()
        return end * self.page_size


# --- reading ---

class Reader:
    """A read-only view of a bbolt database in ``data`` (bytes or an mmap), checked on open.

    Raises BoltError (what and which page) when the file is not a consistent bbolt database:
    no valid meta, truncated, a page of the wrong type or id, keys out of order, a page
    referenced twice, or a page neither reachable nor free.
    """

    def __init__(self, data):
        self.data = data
        metas = []
        errors = []
        for page_id in (0, 1):
            # meta 0 says the page size; without it, assume 4096 (as bbolt assumes the OS's)
            size = metas[0].page_size if metas else PAGE_SIZE
            try:
                metas.append(_parse_meta(data, page_id * size))
            except BoltError as e:
                errors.append(f"meta page {page_id}: {e}")
        if not metas:
            raise BoltError("; ".join(errors))
        self.meta = max(metas, key=lambda m: m.txid)
        self.page_size = self.meta.page_size
        need = self.meta.pgid * self.page_size
        if len(data) < need:
            raise BoltError(f"file truncated: {len(data)} bytes, the meta page says {self.meta.pgid} pages "
                            f"of {self.page_size} bytes ({need} bytes)")
        self._check()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Reader":
        """Map the file at ``path`` read-only and check it. Raises BoltError, OSError."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BoltError("empty file")
            return cls(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    def _page(self, pid: int, seen: dict | None = None) -> tuple[int, int, int, int]:
        """(offset, flags, count, overflow) of page ``pid``, checked against the file."""
        if pid >= self.meta.pgid:
            raise BoltError(f"page {pid}: beyond the high-water mark {self.meta.pgid}")
        off = pid * self.page_size
        hid, flags, count, overflow = _PAGE_HEADER.unpack_from(self.data, off)
        if hid != pid:
            raise BoltError(f"page {pid}: header says page {hid}")
        if pid + overflow >= self.meta.pgid:
            raise BoltError(f"page {pid}: overflow runs past the high-water mark")
        if seen is not None:
            for p in range(pid, pid + overflow + 1):
                if p in seen:
                    raise BoltError(f"page {p}: multiple references")
                seen[p] = True
        return off, flags, count, overflow

    def _check(self) -> None:
        seen: dict[int, bool] = {0: True, 1: True}
        free = set(self.free_pages())
        if self.meta.freelist != NO_FREELIST:
            self._page(self.meta.freelist, seen)
        for _ in self._items(None, seen, True):
            pass
        for p in free:
            if p in seen:
                raise BoltError(f"page {p}: both free and in use")
        missing = [p for p in range(self.meta.pgid) if p not in seen and p not in free]
        if missing and self.meta.freelist != NO_FREELIST:
            raise BoltError(f"page {missing[0]}: unreachable unfreed ({len(missing)} such pages)")

    def free_pages(self) -> list[int]:
        """Page ids on the freelist."""
        if self.meta.freelist == NO_FREELIST:
            return []
        off, flags, count, overflow = self._page(self.meta.freelist)
        if flags != FREELIST_PAGE:
            raise BoltError(f"page {self.meta.freelist}: freelist expected, flags {flags:#x}")
        start = off + HEADER_SIZE
        if count == 0xFFFF:
            count = struct.unpack_from("<Q", self.data, start)[0]
            start += 8
        if start + 8 * count > off + (overflow + 1) * self.page_size:
            raise BoltError(f"page {self.meta.freelist}: freelist longer than its page")
        return list(struct.unpack_from(f"<{count}Q", self.data, start))

    def _walk(self, root: int, seen=None, check: bool = False, inline: bytes | None = None
              ) -> Iterator[tuple[int, bytes, bytes]]:
        """Leaf elements (flags, key, value) of the tree at page ``root`` (or the inline page
        ``inline``), in key order; with ``check`` verifies page types, bounds and key order."""
        last = [None]

        def leaf(buf, off: int, count: int, end: int):
            for i in range(count):
                e = off + HEADER_SIZE + i * ELEMENT_SIZE
                flags, pos, ksize, vsize = _LEAF_ELEM.unpack_from(buf, e)
                k0 = e + pos
                if k0 + ksize + vsize > end:
                    raise BoltError(f"leaf element {i} at offset {e}: runs past its page")
                key = bytes(buf[k0:k0 + ksize])
                if check and last[0] is not None and key <= last[0]:
                    raise BoltError(f"leaf element {i} at offset {e}: key {key!r} out of order")
                last[0] = key
                yield flags, key, bytes(buf[k0 + ksize:k0 + ksize + vsize])

        if inline is not None:
            _, flags, count, _ = _PAGE_HEADER.unpack_from(inline, 0)
            if flags != LEAF_PAGE:
                raise BoltError(f"inline bucket page: leaf expected, flags {flags:#x}")
            yield from leaf(inline, 0, count, len(inline))
            return
        stack = [root]
        while stack:
            pid = stack.pop()
            off, flags, count, overflow = self._page(pid, seen if check else None)
            end = off + (overflow + 1) * self.page_size
            if flags == LEAF_PAGE:
                yield from leaf(self.data, off, count, end)
            elif flags == BRANCH_PAGE:
                children = []
                for i in range(count):
                    e = off + HEADER_SIZE + i * ELEMENT_SIZE
                    pos, ksize, child = _BRANCH_ELEM.unpack_from(self.data, e)
                    if e + pos + ksize > end:
                        raise BoltError(f"page {pid}: branch element {i} runs past its page")
                    children.append(child)
                stack.extend(reversed(children))
            else:
                raise BoltError(f"page {pid}: invalid type {flags:#x} in a bucket's tree")

    def _items(self, bucket_value: bytes | None, seen=None, check: bool = False):
        if bucket_value is None:
            root, inline = self.meta.root, None
        else:
            if len(bucket_value) < _BUCKET.size:
                raise BoltError("bucket value shorter than a bucket header")
            root = _BUCKET.unpack_from(bucket_value)[0]
            inline = bytes(bucket_value[_BUCKET.size:]) if root == 0 else None
        for flags, key, value in self._walk(root, seen, check, inline):
            if check and flags & BUCKET_LEAF_FLAG:
                for _ in self._items(value, seen, check):
                    pass
            yield flags, key, value

    def _bucket_value(self, path: tuple[bytes, ...]) -> bytes | None:
        value = None
        for name in path:
            for flags, key, v in self._items(value):
                if key == name and flags & BUCKET_LEAF_FLAG:
                    value = v
                    break
            else:
                raise KeyError(b"/".join(path))
        return value

    def buckets(self, *path: bytes) -> list[bytes]:
        """Names of the buckets in the bucket at ``path`` (the root when empty). Raises KeyError."""
        return [k for f, k, _ in self._items(self._bucket_value(path)) if f & BUCKET_LEAF_FLAG]

    def items(self, *path: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of the bucket at ``path`` in key order, sub-buckets left out. Raises KeyError."""
        for flags, key, value in self._items(self._bucket_value(path)):
            if not flags & BUCKET_LEAF_FLAG:
                yield key, value

    def has_bucket(self, *path: bytes) -> bool:
        """Whether the bucket at ``path`` exists."""
        try:
            self._bucket_value(path)
            return True
        except KeyError:
            return False
