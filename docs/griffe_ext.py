"""Griffe extensions (mkdocs.yml) for two conventions of gradflow's docstrings.

- Sphinx roles, ``:func:`fit``` or ``:class:`~gradflow.gradients.NamedNorms```, which Markdown
  would show verbatim: each is resolved in the scope of the object whose docstring holds it (so
  ``fit`` in ``gradflow.train`` is ``gradflow.train.fit``) and becomes an *optional* autoref, a
  link where the target is in the reference and plain code (no warning) where it is not (a
  private helper, JAX, NumPy).
- Grouped arguments, ``w, b: self-weight and bias``, which the Google parser reads as one
  parameter named "w, b" (and warns that no such parameter exists): each name gets its own
  entry with the shared description, so griffe still checks every name against the signature.
"""

from __future__ import annotations

import html
import re

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`(~?)([\w.]+?)(?:\(\))?`"
)
_ARGS = re.compile(r"(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):\s*")
_GROUP = re.compile(r"(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(.*)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _target(obj: griffe.Object, name: str) -> str:
    head, _, rest = name.partition(".")
    try:
        # The first component in the docstring owner's scope (its members, module, imports).
        resolved = obj.resolve(head)
    except Exception:  # NameResolutionError, an unloaded external alias: keep it as written
        return name
    return f"{resolved}.{rest}" if rest else resolved


def link_roles(obj: griffe.Object, text: str) -> str:
    """``text`` with every Sphinx role replaced by an optional autoref resolved from ``obj``."""

    def link(match: re.Match) -> str:
        short, name = match[1], match[2]
        title = name.rsplit(".", 1)[-1] if short else name
        target = name if name.startswith("gradflow") else _target(obj, name)
        return (
            f'<autoref identifier="{html.escape(target)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )

    return _ROLE.sub(link, text)


def split_grouped_args(text: str) -> str:
    """``text`` with each ``a, b: description`` entry of an Args section written once per name."""
    lines, out, i = text.splitlines(), [], 0
    section = None  # (header indent, entry indent) while inside an Args-like section
    while i < len(lines):
        line = lines[i]
        if _ARGS.fullmatch(line.strip()):
            section = (_indent(line), None)
            out.append(line)
            i += 1
            continue
        if section is not None and line.strip():
            header, entry = section
            if _indent(line) <= header:
                section = None
            elif entry is None:
                section = (header, _indent(line))
        if section is not None and line.strip() and _indent(line) == section[1]:
            match = _GROUP.fullmatch(line.strip())
            # The entry's continuation lines are the more deeply indented ones that follow.
            j = i + 1
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) > section[1]:
                j += 1
            if match:
                pad = " " * section[1]
                for name in re.split(r"\s*,\s*", match[1]):
                    out.append(f"{pad}{name}{match[2] or ''}:{match[3]}")
                    out.extend(lines[i + 1 : j])
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DocstringConventions(griffe.Extension):
    """Applies :func:`split_grouped_args` and :func:`link_roles` to every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        obj.docstring.value = link_roles(obj, split_grouped_args(obj.docstring.value))
