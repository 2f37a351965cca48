"""Text layout of exported SVG figures, measured in headless Chromium.

Every SVG is inlined into one page; for each visible `<text>` the browser gives its box
(`getBBox`) and the transform from the text to its SVG root (`getCTM`). The box's four corners,
transformed, form a (possibly rotated) quadrilateral in canvas pixels. Two quadrilaterals overlap
when no separating axis exists (both are convex); a text leaves the canvas when a corner is outside
[0, width] x [0, height]. A tolerance of `TOLERANCE_PX` absorbs sub-pixel glyph overhang.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

TOLERANCE_PX = 1.0

CHECK_JS = """(tol) => {
  function quad(el, root) {
    const b = el.getBBox();
    if (!b.width || !b.height) return null;
    const m = el.getCTM();  // text -> nearest viewport (the figure's root <svg>)
    const pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]];
    return pts.map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
  }
  function shrink(q, d) {  // move corners towards the centre by d px
    const cx = q.reduce((s, p) => s + p[0], 0) / 4, cy = q.reduce((s, p) => s + p[1], 0) / 4;
    return q.map(([x, y]) => {
      const dx = x - cx, dy = y - cy, n = Math.hypot(dx, dy) || 1;
      return [x - dx / n * Math.min(d, n), y - dy / n * Math.min(d, n)];
    });
  }
  function separated(a, b) {
    for (const poly of [a, b]) {
      for (let i = 0; i < 4; i++) {
        const p = poly[i], q = poly[(i + 1) % 4];
        const nx = q[1] - p[1], ny = p[0] - q[0];
        const pa = a.map(v => v[0] * nx + v[1] * ny), pb = b.map(v => v[0] * nx + v[1] * ny);
        if (Math.max(...pa) <= Math.min(...pb) || Math.max(...pb) <= Math.min(...pa)) return true;
      }
    }
    return false;
  }
  const out = [];
  for (const fig of document.querySelectorAll('figure[data-name]')) {
    const roots = fig.querySelectorAll(':scope > svg');
    const W = parseFloat(roots[0].getAttribute('width')), H = parseFloat(roots[0].getAttribute('height'));
    const texts = [];
    let minFont = Infinity;
    for (const root of roots) {
      for (const el of root.querySelectorAll('text')) {
        const s = (el.textContent || '').trim();
        if (!s) continue;
        const cs = getComputedStyle(el);
        if (cs.display === 'none' || cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) continue;
        let hidden = false;
        for (let p = el.parentElement; p && p !== root; p = p.parentElement) {
          const ps = getComputedStyle(p);
          if (ps.display === 'none' || parseFloat(ps.opacity) === 0) { hidden = true; break; }
        }
        if (hidden) continue;
        const ctm = el.getCTM();
        minFont = Math.min(minFont, parseFloat(cs.fontSize) * Math.hypot(ctm.a, ctm.b));
        const q = quad(el, root);
        if (q) texts.push({text: s.slice(0, 40), cls: (el.getAttribute('class') || '') + '<' +
                           (el.parentElement.getAttribute('class') || ''), q: q, s: shrink(q, tol)});
      }
    }
    const problems = [];
    for (const t of texts) {
      if (t.s.some(([x, y]) => x < 0 || y < 0 || x > W || y > H)) {
        const xs = t.q.map(p => p[0]), ys = t.q.map(p => p[1]);
        problems.push({type: 'off-canvas', text: t.text, cls: t.cls,
          box: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)].map(Math.round), canvas: [W, H]});
      }
    }
    for (let i = 0; i < texts.length; i++) {
      for (let j = i + 1; j < texts.length; j++) {
        if (!separated(texts[i].s, texts[j].s)) {
          problems.push({type: 'overlap', a: texts[i].text, a_cls: texts[i].cls, b: texts[j].text, b_cls: texts[j].cls});
        }
      }
    }
    out.push({name: fig.dataset.name, texts: texts.length, problems: problems, width: W, height: H,
              min_font_px: minFont === Infinity ? null : minFont});
  }
  return out;
}"""


def page_html(svgs: dict[str, bytes]) -> str:
    """One page holding every SVG inline, each in <figure data-name=...>."""
    parts = ["<!doctype html><html><body style='margin:0'>"]
    for name, data in svgs.items():
        text = data.decode("utf-8")
        text = text[text.index("<svg") :]
        parts.append(
            f"<figure data-name='{html.escape(name, quote=True)}' style='margin:0 0 20px 0'>{text}</figure>"
        )
    parts.append("</body></html>")
    return "".join(parts)


def check_svgs(page: Any, svgs: dict[str, bytes], tolerance: float = TOLERANCE_PX) -> list[dict[str, Any]]:
    """Load `svgs` into `page` (one load) and return one report per figure:
    {name, texts, problems: [{type: overlap|off-canvas, ...}]}."""
    page.set_content(page_html(svgs), wait_until="load")
    page.evaluate("document.fonts.ready")
    return list(page.evaluate(CHECK_JS, tolerance))


def check_files(page: Any, paths: list[Path]) -> list[dict[str, Any]]:
    return check_svgs(page, {p.name: p.read_bytes() for p in paths})
