"""Sphinx configuration: MyST pages and an API reference built from the docstrings."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import cyclax  # noqa: E402

project = "cyclax"
author = "cyclax maintainers"
copyright = "cyclax maintainers"
release = cyclax.__version__
version = cyclax.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
# Pages written by the example scripts (digits.md, ...) skip heading levels in their tables of results.
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"cyclax {release}"
