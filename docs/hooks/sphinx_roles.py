"""MkDocs hook: the docstrings' Sphinx roles (:func:`~transfer.compare`) shown as code (`compare`), as Sphinx shows
them, rather than as the role's raw text; a leading ``~`` keeps the last part of the name only."""

import re

ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def on_page_content(html, **kwargs):
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
