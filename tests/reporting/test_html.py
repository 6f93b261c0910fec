"""The page builder and the Markdown it converts (results.md)."""

import base64
import io
import re

from PIL import Image

from dreamteacher.reporting.html import Page, markdown_html


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_page_embeds_its_images_and_escapes_text(tmp_path):
    page = Page("run <a>")
    page.para("loss < 1 & <script>alert(1)</script>")
    page.image(_png(7, 5), "first")
    page.images([(_png(3, 2), "a"), (_png(4, 4), "b")], pixels=True)
    page.table(["k"], [["<b>"]])
    out = page.write(tmp_path / "r.html")
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;" in text
    assert "http" not in text  # nothing to fetch: self-contained
    data = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    sizes = [Image.open(io.BytesIO(base64.b64decode(d))).size for d in data]
    assert sizes == [(7, 5), (3, 2), (4, 4)]


def test_results_markdown_becomes_tables():
    md = (
        "# Benchmark (cpu profile)\n\nresnet18 at `64x80`; seeds [0].\n\n"
        "**finetune** (test mIoU %)\n\n| method | N = 46 |\n|---|---|\n| scratch | 26.7 |\n"
        "| dreamteacher | **29.9** |\n"
    )
    html = markdown_html(md)
    assert "<h2>Benchmark (cpu profile)</h2>" in html
    assert "<p>resnet18 at <code>64x80</code>; seeds [0].</p>" in html
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    assert rows == [
        "<th>method</th><th>N = 46</th>",
        "<td>scratch</td><td>26.7</td>",
        "<td>dreamteacher</td><td><b>29.9</b></td>",
    ]
