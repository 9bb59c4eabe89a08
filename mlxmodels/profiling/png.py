"""A dependency-free PNG bar chart: a small raster, a 3×5 pixel font, and zlib for the file.

Plot libraries are heavy optional installs; a benchmark chart needs only bars and labels.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

# 3x5 glyphs, rows top to bottom, '#' = ink. Lowercase text is drawn in capitals.
_GLYPHS = {
    "0": "###|#.#|#.#|#.#|###", "1": ".#.|##.|.#.|.#.|###", "2": "###|..#|###|#..|###",
    "3": "###|..#|.##|..#|###", "4": "#.#|#.#|###|..#|..#", "5": "###|#..|###|..#|###",
    "6": "###|#..|###|#.#|###", "7": "###|..#|.#.|.#.|.#.", "8": "###|#.#|###|#.#|###",
    "9": "###|#.#|###|..#|###", "A": ".#.|#.#|###|#.#|#.#", "B": "##.|#.#|##.|#.#|##.",
    "C": "###|#..|#..|#..|###", "D": "##.|#.#|#.#|#.#|##.", "E": "###|#..|##.|#..|###",
    "F": "###|#..|##.|#..|#..", "G": "###|#..|#.#|#.#|###", "H": "#.#|#.#|###|#.#|#.#",
    "I": "###|.#.|.#.|.#.|###", "J": "..#|..#|..#|#.#|###", "K": "#.#|#.#|##.|#.#|#.#",
    "L": "#..|#..|#..|#..|###", "M": "#.#|###|###|#.#|#.#", "N": "##.|#.#|#.#|#.#|#.#",
    "O": "###|#.#|#.#|#.#|###", "P": "###|#.#|###|#..|#..", "Q": "###|#.#|#.#|###|..#",
    "R": "##.|#.#|##.|#.#|#.#", "S": "###|#..|###|..#|###", "T": "###|.#.|.#.|.#.|.#.",
    "U": "#.#|#.#|#.#|#.#|###", "V": "#.#|#.#|#.#|#.#|.#.", "W": "#.#|#.#|###|###|#.#",
    "X": "#.#|#.#|.#.|#.#|#.#", "Y": "#.#|#.#|.#.|.#.|.#.", "Z": "###|..#|.#.|#..|###",
    " ": "...|...|...|...|...", ".": "...|...|...|...|.#.", "-": "...|...|###|...|...",
    "+": "...|.#.|###|.#.|...", "_": "...|...|...|...|###", "/": "..#|..#|.#.|#..|#..",
    ":": "...|.#.|...|.#.|...", "@": "###|#.#|###|#..|###", "%": "#.#|..#|.#.|#..|#.#",
    "(": ".#.|#..|#..|#..|.#.", ")": ".#.|..#|..#|..#|.#.", "?": "###|..#|.##|...|.#.",
    ",": "...|...|...|.#.|#..", "·": "...|...|.#.|...|...", "=": "...|###|...|###|...", "|": ".#.|.#.|.#.|.#.|.#.",
}
SCALE = 2  # each font pixel drawn as a 2x2 block
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0)) -> None:
    for ch in text.upper():
        glyph = _GLYPHS.get(ch, _GLYPHS["?"])
        for r, row in enumerate(glyph.split("|")):
            for c, px in enumerate(row):
                if px == "#":
                    y0, x0 = y + r * SCALE, x + c * SCALE
                    img[y0 : y0 + SCALE, x0 : x0 + SCALE] = color
        x += 4 * SCALE


def text_width(text: str) -> int:
    return len(text) * 4 * SCALE


def encode_png(img: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] → PNG bytes (8-bit truecolour, filter 0 on every row)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def bar_chart(title: str, bars: list[tuple[str, float, int]], unit: str, legend: list[str] = ()) -> np.ndarray:
    """Horizontal bars: (label, value, colour index), with a colour key for `legend` (names by
    colour index) after the title. Returns the RGB image."""
    row_h, pad = 10 * SCALE, 6 * SCALE
    label_w = max([text_width(lbl) for lbl, _, _ in bars] + [0]) + pad
    plot_w = 420
    value_w = text_width("000000.0 " + unit) + pad
    key_w = sum(5 * SCALE + 2 * SCALE + text_width(n) + pad for n in legend)
    width = max(pad + label_w + plot_w + value_w, 3 * pad + text_width(title) + key_w)
    height = pad * 3 + 7 * SCALE + row_h * len(bars)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    _text(img, pad, pad, title)
    x = pad + text_width(title) + 2 * pad
    for i, name in enumerate(legend):
        img[pad : pad + 5 * SCALE, x : x + 5 * SCALE] = PALETTE[i % len(PALETTE)]
        x += 5 * SCALE + SCALE * 2
        _text(img, x, pad, name)
        x += text_width(name) + pad
    top = pad * 2 + 7 * SCALE
    vmax = max([v for _, v, _ in bars] + [1e-12])
    x0 = pad + label_w
    img[top - 2 : top + row_h * len(bars), x0 - 1] = (0, 0, 0)
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row_h
        _text(img, pad, y + SCALE, label)
        n = int(round(plot_w * value / vmax))
        img[y + SCALE : y + row_h - SCALE, x0 : x0 + n] = PALETTE[colour % len(PALETTE)]
        _text(img, x0 + n + pad // 2, y + SCALE, f"{value:.1f} {unit}")
    return img


def write_png(path: Path, img: np.ndarray) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".chart-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode_png(img))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
