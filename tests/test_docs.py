"""Every Python block of the README and of docs/*.md runs as written.

The blocks of one page run in order in one namespace (a later block may use the
names an earlier one defined), in a scratch working directory. A page that holds
the marker ``<!-- test: 8 devices -->`` runs in a subprocess with 8 forced CPU
devices.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES_MARKER = "<!-- test: 8 devices -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[str]:
  """The code of every ```python block, dedented, in order."""
  return [textwrap.dedent(m.group("body")) for m in FENCE.finditer(text)]


def _pages() -> list[str]:
  docs = os.path.join(ROOT, "docs")
  pages = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(docs) if f.endswith(".md"))
  return [p for p in pages if python_blocks(_read(p))]


def _read(page: str) -> str:
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    return f.read()


def _script(page: str) -> str:
  """The page's blocks as one script; each block is compiled under its own name for tracebacks."""
  blocks = python_blocks(_read(page))
  return "\n".join(
    f"exec(compile({block!r}, {f'{page} block {i + 1}'!r}, 'exec'), namespace)"
    for i, block in enumerate(blocks)
  )


def test_the_block_extractor_finds_indented_blocks_and_skips_other_languages():
  text = "x\n```python\na = 1\n```\n```bash\nls\n```\n- item\n\n  ```python\n  b = a + 1\n  ```\n"
  assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.parametrize("page", _pages())
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
  text = _read(page)
  if DEVICES_MARKER in text:
    program = "namespace = {'__name__': '__docs__'}\n" + _script(page)
    env = reference.subprocess_env(8)
    result = subprocess.run(
      [sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__docs__"}
  for i, block in enumerate(python_blocks(text)):
    exec(compile(block, f"{page} block {i + 1}", "exec"), namespace)


def test_ci_runs_exactly_the_test_command_of_the_readme():
  readme_commands = re.search(r"```bash\n(.*?)```", _read("README.md"), re.S).group(1).strip().splitlines()
  ci_lines = [line for line in _read(".ci/run").splitlines() if line and not line.startswith("#")]
  assert ci_lines[-1] == readme_commands[1]


def test_the_api_reference_documents_every_public_name_once():
  import cyclax

  documented = re.findall(r"^\.\. auto(?:function|class):: cyclax\.(\w+)$", _read("docs/api.md"), re.M)
  assert sorted(documented) == sorted(cyclax.__all__)
