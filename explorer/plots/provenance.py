"""Provenance inside exported figure files, and byte-for-byte reproducible exports.

Every exported figure carries, in its own file metadata, what produced it: run id, model, weight
hash, parameters, package version and the command that regenerates it.

- PNG: one `tEXt` chunk, keyword "explorer:provenance", value the JSON (plus a `pHYs` chunk
  declaring the resolution, 300 dpi for paper exports);
- SVG: a `<metadata>` element holding the JSON, first child of the root `<svg>`;
- PDF: the document information dictionary (`/Title`, `/Subject`, `/Keywords` and a custom
  `/ExplorerProvenance` entry holding the JSON).

Reproducibility: plotly names SVG clip paths and gradients with a random 6-hex id per render,
and Chromium stamps PDFs with the time of rendering. Both are replaced by fixed values, so the
same run exported twice gives the same bytes.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEY = b"explorer:provenance"
PDF_KEY = "/ExplorerProvenance"
FIXED_PDF_DATE = "D:20000101000000+00'00'"


def provenance_json(meta: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, ASCII) so that equal provenance gives equal bytes."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=True, default=str, separators=(",", ":"))


# ---- PNG -------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_with_provenance(data: bytes, meta: dict[str, Any], dpi: float | None = None) -> bytes:
    """`data` with a tEXt provenance chunk (and a pHYs resolution chunk) after IHDR; any
    earlier provenance or pHYs chunk is replaced."""
    chunks = [
        (k, v)
        for k, v in _png_chunks(data)
        if k != b"pHYs" and not (k == b"tEXt" and v.startswith(PNG_KEY + b"\x00"))
    ]
    extra = [_png_chunk(b"tEXt", PNG_KEY + b"\x00" + provenance_json(meta).encode("latin-1"))]
    if dpi:
        per_metre = round(dpi / 0.0254)
        extra.insert(0, _png_chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)))
    out = [PNG_SIGNATURE, _png_chunk(*chunks[0]), *extra]
    out += [_png_chunk(k, v) for k, v in chunks[1:]]
    return b"".join(out)


def png_dpi(data: bytes) -> float | None:
    for kind, value in _png_chunks(data):
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", value)
            return x * 0.0254 if unit == 1 else None
    return None


# ---- SVG -------------------------------------------------------------------------------
_SVG_ID = re.compile(rb'\bid="([^"]+)"')


def svg_reproducible(data: bytes) -> bytes:
    """Plotly names clip paths, gradients and defs with random per-render ids: rename every id
    to `e<n>` in order of appearance, and every reference to it (`url(#id)`, `href="#id"`)."""
    mapping: dict[bytes, bytes] = {}
    for m in _SVG_ID.finditer(data):
        mapping.setdefault(m.group(1), b"e%d" % len(mapping))
    if not mapping:
        return data

    def rename(m: re.Match[bytes]) -> bytes:
        old = m.group(2)
        return m.group(1) + mapping.get(old, old) + m.group(3)

    return re.sub(rb"""(\bid="|url\((?:'|"|&quot;)?#|href="#)([^"')&]+)(["')&])""", rename, data)


def svg_with_provenance(data: bytes, meta: dict[str, Any]) -> bytes:
    from xml.sax.saxutils import escape

    data = re.sub(rb"<metadata id=\"explorer-provenance\">.*?</metadata>", b"", data, flags=re.S)
    end = data.index(b">", data.index(b"<svg")) + 1
    block = f'<metadata id="explorer-provenance">{escape(provenance_json(meta))}</metadata>'.encode()
    return data[:end] + block + data[end:]


# ---- PDF -------------------------------------------------------------------------------
def pdf_with_provenance(data: bytes, meta: dict[str, Any]) -> bytes:
    """Fixed dates and producer, and the provenance in the document information dictionary."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.add_metadata(
        {
            "/Producer": "Token Explorer (Chromium/Skia via kaleido)",
            "/Creator": f"explorer {meta.get('version', '')}",
            "/CreationDate": FIXED_PDF_DATE,
            "/ModDate": FIXED_PDF_DATE,
            "/Title": str(meta.get("title", "")),
            "/Subject": str(meta.get("command", "")),
            "/Keywords": f"run_id={meta.get('run_id', '')}; model={meta.get('model', '')}",
            PDF_KEY: provenance_json(meta),
        }
    )
    out = io.BytesIO()
    writer.write(out)  # no /ID unless the source had one: pypdf adds a random one only to encrypt
    return out.getvalue()


def pdf_reproducible(data: bytes) -> bytes:
    """Chromium's time stamps replaced by digits of a fixed date, in place (lengths, and so the
    cross-reference offsets, stay valid)."""
    return re.sub(rb"D:\d{14}", b"D:20000101000000", data)


# ---- one entry point -------------------------------------------------------------------
def with_provenance(data: bytes, fmt: str, meta: dict[str, Any], dpi: float | None = None) -> bytes:
    if fmt == "png":
        return png_with_provenance(data, meta, dpi)
    if fmt == "svg":
        return svg_with_provenance(svg_reproducible(data), meta)
    if fmt == "pdf":
        return pdf_with_provenance(pdf_reproducible(data), meta)
    raise ValueError(fmt)


def read_provenance(data: bytes, fmt: str) -> dict[str, Any] | None:
    """The provenance an exported file carries (None when it has none)."""
    if fmt == "png":
        for kind, value in _png_chunks(data):
            if kind == b"tEXt" and value.startswith(PNG_KEY + b"\x00"):
                return dict(json.loads(value[len(PNG_KEY) + 1 :].decode("latin-1")))
        return None
    if fmt == "svg":
        import html

        m = re.search(rb'<metadata id="explorer-provenance">(.*?)</metadata>', data, flags=re.S)
        return dict(json.loads(html.unescape(m.group(1).decode()))) if m else None
    if fmt == "pdf":
        import io

        from pypdf import PdfReader

        info = PdfReader(io.BytesIO(data)).metadata
        raw = info.get(PDF_KEY) if info is not None else None
        return dict(json.loads(str(raw))) if raw else None
    raise ValueError(fmt)
