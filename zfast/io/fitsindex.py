"""A FITS file's structure found at numpy speed, for files of thousands of small HDUs (a Euclid SIR tile holds
~10,000): astropy parses every card of every header in Python, ~1 ms an HDU, which makes reading the file, not
predicting, the slow step.

Only the standard's fixed structure is relied on (FITS 4.0, sections 3, 4.4.1 and 7.3): 2880-byte blocks of
36 80-byte cards; the mandatory keywords first, in their fixed order and fixed format (SIMPLE or XTENSION,
BITPIX, NAXIS, NAXIS1..n, then PCOUNT, GCOUNT in an extension); END closing each header; data padded to a whole
block. The file is memory-mapped and scanned as one array of cards: every END and block-aligned XTENSION card is
found at once, then the chain of HDUs is walked from the primary using the sizes their mandatory cards give.
A chain that breaks (a size that points outside the file or onto something that is no header) is a
``FitsStructureError`` (a ValueError) naming the file and the HDU.

``keyword`` gives one keyword's value in many HDUs at once; ``table_layout`` a binary table's columns as a numpy
dtype, or None when it holds what this module does not decode (heap arrays, bits, complex, logicals, scaled
64-bit columns): the caller then reads the file with astropy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

BLOCK, CARD = 2880, 80
CARDS_PER_BLOCK = BLOCK // CARD
_STRING = re.compile(rb"\s*'((?:[^']|'')*)'")
_STRING_LINE = re.compile(rb"(?m)^ *'([^'\n]*(?:''[^'\n]*)*)'")
_CODES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S"}
_TFORM = re.compile(r"^\s*(\d*)([A-Z])")


def _key(name: str) -> np.uint64:
    """A keyword as a card stores it (upper case, blank-padded to 8 bytes), read as the uint64 ``keys`` holds."""
    return np.frombuffer(name.upper().ljust(8).encode("ascii"), dtype="<u8")[0]


class FitsStructureError(ValueError):
    """The file is not a whole, well-formed FITS file (truncated, or a header's mandatory cards are wrong)."""


@dataclass(frozen=True)
class Column:
    """One binary-table column: ``name`` as TTYPE spells it, ``unit`` (TUNIT, '' if none), and the scaling
    ``scale``·stored + ``zero`` (TSCAL, TZERO; 1 and 0 when absent) that gives its values."""

    name: str
    unit: str
    scale: float = 1.0
    zero: float = 0.0


@dataclass(frozen=True)
class TableLayout:
    """A binary table's row as a numpy structured dtype (big-endian, fields named by upper-case TTYPE) and its
    columns by upper-case name."""

    dtype: np.dtype
    columns: dict

    def values(self, rows: np.ndarray, name: str, dtype=None) -> np.ndarray:
        """Column ``name`` (upper case) of ``rows`` (records of ``dtype``), scaled, native byte order (as
        ``dtype`` if given: one conversion)."""
        column = self.columns[name]
        raw = rows[name]
        if column.scale == 1.0 and column.zero == 0.0:
            return raw.astype(dtype or raw.dtype.newbyteorder("="))
        if raw.dtype.kind in "iu" and column.scale == 1.0 and float(column.zero).is_integer():
            return (raw.astype(np.int64) + int(column.zero)).astype(dtype or np.int64)  # unsigned ints (TZERO = 2^15, 2^31)
        return (raw.astype(np.float64) * column.scale + column.zero).astype(dtype or np.float64, copy=False)


class FitsIndex:
    """Where each HDU of ``path`` lies. Arrays over the HDUs, in file order: ``header_card`` (index of its first
    card), ``end_card`` (its END card), ``data_offset`` (bytes), ``data_bytes`` (its data, heap included, not
    padded) and ``naxis`` [n, 2] (NAXIS1, NAXIS2; 0 where absent). ``raw`` is the mapped file (uint8)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except ValueError as error:  # an empty file cannot be mapped
            raise FitsStructureError(f"{self.path}: not a FITS file ({error})") from error
        self.raw = self._map.view(np.ndarray)  # the bytes without memmap's per-index overhead
        n_blocks = len(self.raw) // BLOCK
        if n_blocks == 0:
            raise FitsStructureError(f"{self.path}: {len(self.raw)} bytes, less than one FITS block (truncated?)")
        # the keyword (first 8 bytes) of every card as a uint64, a strided view: indexing it reads only the cards
        # asked for, so a scan touches the header blocks, not the data
        self.keys = np.ndarray((n_blocks * CARDS_PER_BLOCK,), dtype="<u8", buffer=self.raw, strides=(CARD,))
        if self.keys[0] != _key("SIMPLE"):
            raise FitsStructureError(f"{self.path}: the first card is not SIMPLE: not a FITS file")
        self._walk(n_blocks)

    # --- structure ---------------------------------------------------------------------------------------------
    def _walk(self, n_blocks: int):
        starts = np.concatenate([[0], np.flatnonzero(self.keys[1 * CARDS_PER_BLOCK::CARDS_PER_BLOCK] == _key("XTENSION")) + 1]) * CARDS_PER_BLOCK
        end = self._ends(starts, n_blocks)
        has_end = end >= 0
        starts, end = starts[has_end], end[has_end]
        size, naxis12, ok = self._sizes(starts)
        data_card = -(-(end + 1) // CARDS_PER_BLOCK) * CARDS_PER_BLOCK
        next_card = data_card + (-(-size // BLOCK)) * CARDS_PER_BLOCK
        total = n_blocks * CARDS_PER_BLOCK
        if len(starts) and starts[0] == 0 and ok.all() and (next_card[:-1] == starts[1:]).all() and next_card[-1] == total:
            chain = np.arange(len(starts))  # every candidate is the next HDU: the usual file, checked at once
        else:
            chain = self._chain(starts, next_card, ok, total)
        self.header_card, self.end_card = starts[chain], end[chain]
        self.data_offset, self.data_bytes = data_card[chain] * CARD, size[chain]
        self.naxis = naxis12[chain]
        # every card inside a header (END excluded), its keyword and its HDU: what keyword searches look at
        length = self.end_card - self.header_card
        self.card_owner = np.repeat(np.arange(len(length)), length)
        self.header_cards = np.arange(len(self.card_owner)) - np.repeat(np.cumsum(length) - length, length) + np.repeat(self.header_card, length)
        self.header_keys = self.keys[self.header_cards]

    def _ends(self, starts: np.ndarray, n_blocks: int, most_blocks: int = 1000) -> np.ndarray:
        """The END card of the header beginning at each card of ``starts`` (-1: none within ``most_blocks``
        blocks): block after block, only the headers not yet ended, so only header blocks are read."""
        end = np.full(len(starts), -1, dtype=np.int64)
        by_block = self.keys.reshape(n_blocks, CARDS_PER_BLOCK)
        first_block = starts // CARDS_PER_BLOCK
        for extra in range(most_blocks):
            pending = np.flatnonzero((end < 0) & (first_block + extra < n_blocks))
            if not len(pending):
                break
            blocks = first_block[pending] + extra
            hit = by_block[blocks] == _key("END")
            found = hit.any(axis=1)
            end[pending[found]] = blocks[found] * CARDS_PER_BLOCK + hit[found].argmax(axis=1)
        return end

    def _chain(self, starts, next_card, ok, total) -> np.ndarray:
        """The candidates that are HDUs, followed one by one from the primary (a data block may begin with
        "XTENSION" by chance; only a header the chain reaches counts)."""
        row_of = dict(zip(starts.tolist(), range(len(starts))))
        valid, nexts = ok.tolist(), next_card.tolist()
        chain, card = [], 0
        while card < total:
            row = row_of.get(card)
            if row is None or not valid[row]:
                where = f"after HDU {len(chain) - 1}" if chain else "in the primary header"
                raise FitsStructureError(f"{self.path}: no valid FITS header {where} at byte {card * CARD} (damaged file?)")
            chain.append(row)
            card = nexts[row]
        if card > total:
            raise FitsStructureError(f"{self.path}: HDU {len(chain) - 1} runs past the end of the file (truncated?)")
        return np.asarray(chain, dtype=np.int64)

    def _sizes(self, starts: np.ndarray):
        """(data bytes, [NAXIS1, NAXIS2], mandatory cards well-formed) for candidate headers at card ``starts``."""
        n, last = len(starts), len(self.keys) - 1
        at = lambda cards: np.minimum(cards, last)  # noqa: E731 - a candidate near the end of the file
        bitpix = self._ints(at(starts + 1))
        naxis = self._ints(at(starts + 2))
        ok = (self.keys[at(starts + 1)] == _key("BITPIX")) & (self.keys[at(starts + 2)] == _key("NAXIS"))
        ok &= np.isin(bitpix, (8, 16, 32, 64, -32, -64)) & (naxis >= 0) & (naxis <= 999)
        naxis = np.where(ok, naxis, 0)
        count = np.where(naxis > 0, 1, 0).astype(np.int64)
        naxis12 = np.zeros((n, 2), dtype=np.int64)
        for axis in range(1, int(naxis.max(initial=0)) + 1):
            has = naxis >= axis
            cards = at(np.where(has, starts + 2 + axis, starts + 1))  # BITPIX where absent: an integer card
            value = np.where(has, self._ints(cards), 1)
            ok &= ~has | ((self.keys[cards] == _key(f"NAXIS{axis}")) & (value >= 0))
            count *= np.where(ok, value, 0)
            if axis <= 2:
                naxis12[:, axis - 1] = np.where(has, value, 0)
        extension = starts > 0
        p_card, g_card = at(np.where(extension, starts + 3 + naxis, starts + 1)), at(np.where(extension, starts + 4 + naxis, starts + 1))
        pcount, gcount = self._ints(p_card), self._ints(g_card)
        ok &= ~extension | ((self.keys[p_card] == _key("PCOUNT")) & (self.keys[g_card] == _key("GCOUNT")))
        pcount, gcount = np.where(extension, pcount, 0), np.where(extension, gcount, 1)
        ok &= (pcount >= 0) & (gcount >= 0)
        size = np.abs(bitpix) // 8 * gcount * (pcount + count)
        return np.where(ok, size, 0), naxis12, ok

    def _field(self, cards: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Bytes lo..hi-1 of each card at index ``cards``, as 'S' strings."""
        cards = np.asarray(cards, dtype=np.int64)
        block = self.raw[(cards * CARD)[:, None] + np.arange(lo, hi)]
        return block.view(f"S{hi - lo}").ravel()

    def _ints(self, cards: np.ndarray) -> np.ndarray:
        """Integer values (fixed format: columns 11-30) of the cards at ``cards``; 0 where unreadable."""
        text = self._field(cards, 10, 30)
        try:
            return text.astype(np.int64)
        except ValueError:
            return np.array([_int_or_zero(t) for t in text.tolist()], dtype=np.int64)

    # --- keywords ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.header_card)

    def cards_of(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(hdu, card) of every ``key`` card inside a header (the first per HDU)."""
        where = np.flatnonzero(self.header_keys == _key(key))
        hdu, cards = self.card_owner[where], self.header_cards[where]
        first = np.concatenate([[True], hdu[1:] != hdu[:-1]]) if len(hdu) else np.zeros(0, bool)
        return hdu[first], cards[first]

    def strings(self, key: str) -> list:
        """``key``'s string value in each HDU ('' where absent), trailing blanks dropped."""
        out = [""] * len(self)
        hdu, cards = self.cards_of(key)
        if len(cards):
            text = self._value_lines(cards)
            found = _STRING_LINE.findall(text)
            if len(found) == len(cards):  # every line a string (the pattern is anchored at line starts): in order
                pairs = zip(hdu.tolist(), found)
            else:
                owners = hdu.tolist()
                pairs = ((owners[m.start() // 71], m.group(1)) for m in _STRING_LINE.finditer(text))
            quoted = b"''" in text
            for h, value in pairs:
                out[h] = (value.replace(b"''", b"'") if quoted else value).decode("ascii", "replace").rstrip()
        return out

    def _value_lines(self, cards: np.ndarray) -> bytes:
        """The value fields (bytes 11-80) of ``cards``, one 71-byte line each: searched by one regex pass."""
        lines = np.full((len(cards), 71), ord("\n"), dtype=np.uint8)
        lines[:, :70] = self.raw[(cards * CARD)[:, None] + np.arange(10, CARD)]
        return lines.tobytes()

    def matching(self, key: str, pattern: bytes) -> tuple[list, list]:
        """(HDUs, matches) where ``key``'s string value matches the regex ``pattern`` whole (trailing blanks
        allowed); one regex pass over every such card, so a tile's 10,000 EXTNAMEs cost ~1 ms."""
        hdu, cards = self.cards_of(key)
        if not len(cards):
            return [], []
        owners, hdus, found = hdu.tolist(), [], []
        for match in re.finditer(rb"(?m)^ *'" + pattern + rb" *'", self._value_lines(cards)):
            hdus.append(owners[match.start() // 71])
            found.append(match)
        return hdus, found

    def floats(self, key: str, default: float) -> np.ndarray:
        """``key``'s numeric value in each HDU (``default`` where absent); a value that is no number raises."""
        out = np.full(len(self), float(default))
        hdu, cards = self.cards_of(key)
        try:  # fixed format (right-justified in columns 11-30), as pipelines write it
            out[hdu] = self._field(cards, 10, 30).astype(np.float64)
            return out
        except ValueError:
            pass
        for h, text in zip(hdu.tolist(), self._field(cards, 10, 80).tolist()):
            value = text.split(b"/")[0].strip().replace(b"D", b"E")
            try:
                out[h] = float(value)
            except ValueError:
                raise FitsStructureError(f"{self.path}: HDU {h}: {key} = {value.decode(errors='replace')!r} is not a number") from None
        return out

    def header(self, hdu: int) -> dict:
        """Every keyword of one HDU's header: upper-case key -> value (str, int, float or bool; None when empty)."""
        out = {}
        for card in range(int(self.header_card[hdu]), int(self.end_card[hdu])):
            text = bytes(self.raw[card * CARD:(card + 1) * CARD])
            key = text[:8].decode("ascii", "replace").strip()
            if text[8:10] == b"= " and key and key not in out:
                out[key] = _value(text[10:])
        return out

    # --- binary tables -----------------------------------------------------------------------------------------
    def table_layouts(self, hdus) -> list:
        """The ``table_layout`` of each HDU in ``hdus``, each layout parsed once: tables whose NAXIS1 and column
        cards (TFIELDS, TTYPE, TFORM, TUNIT, TSCAL, TZERO, TNULL, TDIM, byte for byte) equal share it. The tables
        of a pipeline's file are alike: the first is compared with all the others in one array operation."""
        hdus = np.asarray(hdus, dtype=np.int64)
        cards, owner = self._column_cards()
        lo, hi = np.searchsorted(owner, hdus), np.searchsorted(owner, hdus, side="right")
        width = self.naxis[hdus, 0]
        out, parsed = [None] * len(hdus), {}
        if not len(hdus):
            return out
        n = hi[0] - lo[0]
        alike = np.flatnonzero((hi - lo == n) & (width == width[0]))
        words = self.raw[: len(self.raw) // 8 * 8].view("<u8")  # a card is 10 words of 8 bytes
        text = words[(cards[lo[alike, None] + np.arange(n)] * (CARD // 8))[..., None] + np.arange(CARD // 8)]  # [m, n, 10]
        alike = alike[(text == text[0]).all(axis=(1, 2))]
        layout = self.table_layout(int(hdus[0]))
        for i in alike.tolist():
            out[i] = layout
        rest = np.setdiff1d(np.arange(len(hdus)), alike)
        for i in rest.tolist():  # the others: by their bytes
            key = (int(width[i]), self.raw[(cards[lo[i]:hi[i]] * CARD)[:, None] + np.arange(CARD)].tobytes())
            if key not in parsed:
                parsed[key] = self.table_layout(int(hdus[i]))
            out[i] = parsed[key]
        return out

    def _column_cards(self) -> tuple[np.ndarray, np.ndarray]:
        """(card, hdu) of every column-defining card inside a header, in file order (computed once)."""
        if getattr(self, "_columns", None) is None:
            keys = self.header_keys
            five, four = keys & np.uint64(0xFFFFFFFFFF), keys & np.uint64(0xFFFFFFFF)
            is_column = np.isin(five, [_key(k) & np.uint64(0xFFFFFFFFFF) for k in ("TTYPE", "TFORM", "TUNIT", "TSCAL", "TZERO", "TNULL")])
            is_column |= (four == (_key("TDIM") & np.uint64(0xFFFFFFFF))) | (keys == _key("TFIELDS"))
            self._columns = self.header_cards[is_column], self.card_owner[is_column]
        return self._columns

    def table_layout(self, hdu: int) -> Optional[TableLayout]:
        """HDU ``hdu``'s binary-table row layout, or None if it is no BINTABLE or holds columns not decoded here."""
        header = self.header(hdu)
        if str(header.get("XTENSION", "")).strip() != "BINTABLE" or header.get("BITPIX") != 8:
            return None
        fields, columns, width = [], {}, 0
        for i in range(1, int(header.get("TFIELDS") or 0) + 1):
            match = _TFORM.match(str(header.get(f"TFORM{i}", "")))
            if not match or match.group(2) not in _CODES:
                return None
            repeat, code = int(match.group(1) or 1), match.group(2)
            scale, zero = float(header.get(f"TSCAL{i}", 1.0)), float(header.get(f"TZERO{i}", 0.0))
            if code in "AK" and (scale, zero) != (1.0, 0.0):
                return None
            name = str(header.get(f"TTYPE{i}") or f"COL{i}").strip().upper()
            base = np.dtype(f"S{repeat}") if code == "A" else np.dtype(_CODES[code])
            dtype = base if code == "A" or repeat == 1 else np.dtype((base, (repeat,)))
            if repeat and name not in columns:
                fields.append((name, dtype, width))
                columns[name] = Column(name, str(header.get(f"TUNIT{i}") or "").strip(), scale, zero)
            width += 0 if repeat == 0 else dtype.itemsize
        if width != int(self.naxis[hdu, 0]):
            return None
        dtype = np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                          "offsets": [f[2] for f in fields], "itemsize": width})  # fmt: skip
        return TableLayout(dtype, columns)

    def rows(self, hdu: int, layout: TableLayout) -> np.ndarray:
        """HDU ``hdu``'s NAXIS2 rows as records of ``layout.dtype`` (a view into the mapped file)."""
        offset, n = int(self.data_offset[hdu]), int(self.naxis[hdu, 1])
        return self.raw[offset:offset + n * layout.dtype.itemsize].view(layout.dtype)

    def tables(self, hdus, layout: TableLayout) -> np.ndarray:
        """The rows of tables ``hdus`` of one layout and one NAXIS2, as records [len(hdus), NAXIS2] (a copy)."""
        hdus = np.asarray(hdus, dtype=np.int64)
        n_bytes = int(self.naxis[hdus[0], 1]) * layout.dtype.itemsize
        if (self.naxis[hdus, 1] * layout.dtype.itemsize != n_bytes).any():
            raise ValueError(f"{self.path}: tables() needs tables of one length")
        raw = self.raw
        data = np.stack([raw[o:o + n_bytes] for o in self.data_offset[hdus].tolist()])  # bytes: no field promotion
        return data.view(layout.dtype)

    def first_rows(self, hdus, layout: TableLayout) -> np.ndarray:
        """The first row of each table of ``hdus`` (one layout, at least one row each), as records [len(hdus)]."""
        hdus = np.asarray(hdus, dtype=np.int64)
        data = self.raw[self.data_offset[hdus][:, None] + np.arange(layout.dtype.itemsize)]
        return data.view(layout.dtype)[:, 0]

    def close(self):
        mm = getattr(self._map, "_mmap", None)
        self._map = self.raw = self.keys = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive elsewhere keep it open; it closes when they go
                pass


def _int_or_zero(text: bytes) -> int:
    try:
        return int(text.split(b"/")[0])
    except ValueError:
        return 0


def _value(text: bytes):
    """A card's value field (bytes 11-80) as Python: a string, a logical, an integer or a float; None if empty."""
    match = _STRING.match(text)
    if match:
        return match.group(1).replace(b"''", b"'").decode("ascii", "replace").rstrip()
    value = text.split(b"/")[0].strip()
    if value in (b"T", b"F"):
        return value == b"T"
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return float(value.replace(b"D", b"E"))
        except ValueError:
            return value.decode("ascii", "replace")
