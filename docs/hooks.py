"""MkDocs hook (``hooks:`` in mkdocs.yml): README.md as the site page ``readme.md``.

README.md lives at the repository root, outside ``docs/``; it is added to the site with its
``docs/…`` links made relative to ``docs/``, so the home page links its sections and
``mkdocs build --strict`` checks those links and anchors.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def on_files(files, config):
    text = _README.read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "readme.md", content=text))
    return files
