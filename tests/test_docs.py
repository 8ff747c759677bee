"""Meta-tests of the documentation: every hook is documented and tested, and the code in the docs runs."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from iqcore import hookspecs

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "iqcore_spec"))


def python_blocks(path: pathlib.Path) -> list[str]:
    """The ```python blocks of a Markdown file, except those right after a ``docs-test: skip`` comment."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        if before and SKIP.search(before[-1]):
            continue
        blocks.append(match.group(1))
    return blocks


RUNNER = textwrap.dedent("""
    import json, sys, traceback
    for name, blocks in json.load(sys.stdin).items():
        namespace = {"__name__": "__main__"}
        try:
            for i, block in enumerate(blocks):
                exec(compile(block, f"{name} (python block {i + 1})", "exec"), namespace)
            error = None
        except BaseException:
            error = traceback.format_exc()[-3000:]
        print("PAGE-RESULT " + json.dumps([name, error]), flush=True)
""")


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    """Run every page's Python blocks, in order and sharing one namespace per page, in a fresh process.

    A page that kills the process (a TensorFlow abort) fails with the process's last words; the pages after
    it run in a new process.
    """
    pending = {str(p.relative_to(ROOT)): python_blocks(p) for p in PAGES}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    cwd = tmp_path_factory.mktemp("docs")
    results = {}
    while pending:
        run = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(pending), capture_output=True,
                             text=True, cwd=cwd, env=env, timeout=600, check=False)
        for line in run.stdout.splitlines():
            if line.startswith("PAGE-RESULT "):
                name, error = json.loads(line[len("PAGE-RESULT "):])
                results[name] = error
        pending = {name: blocks for name, blocks in pending.items() if name not in results}
        if pending:
            crashed = next(iter(pending))
            results[crashed] = f"the process died (exit code {run.returncode}) in this page:\n{run.stderr[-3000:]}"
            del pending[crashed]
    return results


def test_the_hookspec_module_declares_at_least_one_hook():
    assert "register_quantizers" in HOOKS, f"hooks found in iqcore.hookspecs: {HOOKS}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_in_the_plugin_guide(hook):
    headings = [line for line in (DOCS / "plugins.md").read_text().splitlines() if line.startswith("#")]
    assert any(f"`{hook}`" in h for h in headings), f"docs/plugins.md has no heading for the hook {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    tests = [p for p in ROOT.glob("tests/test_*.py") if p.name != "test_docs.py"]
    tests += list(ROOT.glob("plugins/*/tests/test_*.py"))
    assert any(hook in p.read_text() for p in tests), f"no test mentions the hook {hook}"


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in PAGES])
def test_python_blocks_of_the_page_run(page, block_results):
    assert block_results[page] is None, f"{page}:\n{block_results[page]}"
