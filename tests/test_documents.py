"""One document as Markdown and as a self-contained HTML page."""

import base64
import re

import numpy as np
import pytest
from PIL import Image

from cure_jax import documents

BLOCKS = [("h1", "Title"), ("p", "Found **12** images, `code` & <b>"),
          ("table", ["figure", "value"], [["threshold", "0.4321"], ["found", "12"]]),
          ("img", "pic.png", "a picture"), ("pre", "{\n  \"a\": 1\n}")]


def test_markdown_has_every_block():
    text = documents.to_markdown(BLOCKS)
    assert text.startswith("# Title\n")
    assert "| threshold | 0.4321 |" in text
    assert "![a picture](pic.png)" in text
    assert "```\n{" in text


def test_html_embeds_its_pictures_and_escapes_text(tmp_path):
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "pic.png")
    documents.write(BLOCKS, tmp_path, "report", title="T")
    page = (tmp_path / "report.html").read_text()
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(data) == (tmp_path / "pic.png").read_bytes()
    # Self-contained: no other source or link.
    assert page.count("src=") == 1 and "href=" not in page
    assert "<td>0.4321</td>" in page
    assert "&lt;b&gt;" in page and "<code>code</code>" in page
    assert "<strong>12</strong>" in page
    assert (tmp_path / "report.md").exists()


def test_a_missing_picture_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        documents.to_html(BLOCKS, tmp_path, title="T")
