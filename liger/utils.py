"""Small helpers shared by the CLI and the run configs."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FieldDoc:
    name: str
    annotation: str
    """The annotation as written in the source, e.g. ``Literal["a", "b"]`` or ``int | None``."""
    default: str
    """The default as written in the source ("" when there is none)."""
    doc: str


def fields_from_source(source: str, class_name: str) -> list[FieldDoc]:
    """The annotated fields of ``class_name`` in ``source`` with the docstring written under each, as in::

        window_size: int = 64
        \"\"\"Keys in the sliding window.\"\"\"

    Reading the source (rather than importing the class) keeps e.g. ``liger --help`` free of torch imports.
    """
    tree = ast.parse(textwrap.dedent(source))
    # module-level type aliases (``Variant = Literal[...]``) stand for their definition in the annotations
    aliases = {node.targets[0].id: ast.unparse(node.value) for node in tree.body
               if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
               and isinstance(node.value, ast.Subscript) and ast.unparse(node.value.value) == "Literal"}
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    out = []
    for node, nxt in zip(cls.body, cls.body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                doc = " ".join(nxt.value.value.split())
            default = ast.unparse(node.value) if node.value is not None else ""
            if default.startswith("field(default_factory=list"):
                default = "[]"
            annotation = ast.unparse(node.annotation)
            out.append(FieldDoc(node.target.id, aliases.get(annotation, annotation), default, doc))
    return out


def file_fields(path: str | Path, class_name: str) -> list[FieldDoc]:
    return fields_from_source(Path(path).read_text(), class_name)


@functools.cache
def attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for a class and its bases (see :func:`fields_from_source`)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        docs.update({f.name: f.doc for f in fields_from_source(source, klass.__name__) if f.doc})
    return docs
