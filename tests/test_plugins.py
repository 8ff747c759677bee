"""Plugin discovery through real entry points: broken, duplicate, misspelled and blocked plugins.

Each scenario installs throwaway plugin distributions into a temporary site directory (a dist-info folder
with METADATA and entry_points.txt, as an installer writes it; one test uses pip itself) and runs a fresh
Python process with that directory on its path, so discovery happens for real, once, in that process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKING = """
import iqcore

class WeightsHalfInferableQuantizer(iqcore.ThresholdWeightsQuantizer):
    method = "half"

@iqcore.hookimpl
def register_quantizers(register):
    register(WeightsHalfInferableQuantizer)
"""
BROKEN = "raise ImportError('this plugin is broken on purpose')"
DUPLICATE = """
import iqcore

class Other(iqcore.ThresholdWeightsQuantizer):
    method = "symmetric"

@iqcore.hookimpl
def register_quantizers(register):
    register(Other)
"""
MISSPELLED = """
import iqcore

@iqcore.hookimpl
def register_quantizer(register):
    pass
"""
GARBAGE = """
import iqcore

@iqcore.hookimpl
def register_quantizers(register):
    register("not a class")
"""
WRONG_ARGUMENT = """
import iqcore

@iqcore.hookimpl
def register_quantizers(register, extra):
    pass
"""

REPORT = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import iqcore
    from iqcore import _plugins as plugins
    available = sorted(f"{i.method}/{i.target}/{i.distribution}" for i in iqcore.list_quantizers())
errors = {}
for method in ("symmetric", "pot", "half"):
    try:
        iqcore.get_quantizer(method, "weights", num_bits=8, threshold=[1.0])
    except Exception as e:
        errors[method] = f"{type(e).__name__}: {e}"
print(json.dumps({"available": available, "errors": errors,
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, iqcore.PluginWarning)],
                  "failures": [f.plugin for f in plugins.failures()]}))
"""


def install(site, dist, module, code, entry_point, version="1.0"):
    """Write a plugin distribution the way an installer does: the module plus its dist-info."""
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[iqcore]\n{entry_point} = {module}\n")
    (info / "RECORD").write_text("")


def run(site, script=REPORT, **env):
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, timeout=300)
    if done.returncode != 0:
        return {"returncode": done.returncode, "stderr": done.stderr}
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def site(tmp_path):
    return tmp_path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """What is available with no throwaway plugin installed (the in-repo three, plus any others installed)."""
    return run(tmp_path_factory.mktemp("empty"))["available"]


def test_a_third_party_plugin_adds_a_method_next_to_the_built_in_ones(site):
    install(site, "iq-half", "iq_half", WORKING, "half", version="2.3")
    out = run(site)
    assert "half/weights/iq-half" in out["available"] and "symmetric/weights/iq-symmetric" in out["available"]
    assert out["errors"] == {} and out["warnings"] == []


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning_and_the_rest_work(site, baseline):
    install(site, "iq-broken", "iq_broken", BROKEN, "broken")
    install(site, "iq-half", "iq_half", WORKING, "half")
    out = run(site)
    assert out["failures"] == ["broken"]
    assert "iq-broken" in out["warnings"][0] and "broken on purpose" in out["warnings"][0]
    assert out["available"] == sorted(baseline + ["half/weights/iq-half"]) and out["errors"] == {}


def test_two_plugins_registering_the_same_method_make_it_an_error_naming_both(site):
    install(site, "iq-dupe", "iq_dupe", DUPLICATE, "dupe")
    out = run(site)
    assert "symmetric/weights/iq-symmetric" not in out["available"]
    assert "dupe (iq-dupe)" in out["errors"]["symmetric"] and "symmetric (iq-symmetric)" in out["errors"]["symmetric"]
    assert "pot" not in out["errors"] and "several plugins" in out["warnings"][0]


def test_a_misspelled_hook_is_caught_and_its_plugin_skipped(site, baseline):
    install(site, "iq-typo", "iq_typo", MISSPELLED, "typo")
    out = run(site)
    assert out["failures"] == ["typo"] and "register_quantizer" in out["warnings"][0]
    assert out["available"] == baseline


def test_a_hook_implementation_with_an_unknown_argument_is_skipped(site):
    install(site, "iq-extra", "iq_extra", WRONG_ARGUMENT, "extra")
    out = run(site)
    assert out["failures"] == ["extra"] and "extra" in out["warnings"][0]


def test_a_plugin_registering_garbage_is_skipped_with_a_warning(site, baseline):
    install(site, "iq-garbage", "iq_garbage", GARBAGE, "garbage")
    out = run(site)
    assert out["failures"] == ["garbage"] and "not a class" in out["warnings"][0]
    assert out["available"] == baseline


def test_blocked_plugins_are_not_loaded(site):
    out = run(site, IQCORE_BLOCK_PLUGINS="symmetric, iq-pot")
    assert not any("/iq-symmetric" in a or "/iq-pot" in a for a in out["available"])
    assert "uniform/weights/iq-uniform" in out["available"]
    assert "no quantizer for method 'symmetric'" in out["errors"]["symmetric"]


def test_strict_mode_turns_a_broken_plugin_into_an_error(site):
    install(site, "iq-broken", "iq_broken", BROKEN, "broken")
    out = run(site, IQCORE_STRICT_PLUGINS="1")
    assert out["returncode"] != 0 and "PluginError" in out["stderr"] and "iq-broken" in out["stderr"]


def test_importing_iqcore_loads_no_plugin_until_first_use(site):
    script = ("import sys, json, iqcore; before = 'iq_symmetric' in sys.modules; iqcore.list_quantizers(); "
              "print(json.dumps([before, 'iq_symmetric' in sys.modules]))")
    assert run(site, script) == [False, True]


def test_discovery_runs_once_per_process(site):
    counting = WORKING + "\nimport builtins\nbuiltins.LOADS = getattr(builtins, 'LOADS', 0) + 1\n"
    install(site, "iq-half", "iq_half", counting, "half")
    script = ("import builtins, json, iqcore; [iqcore.list_quantizers() for _ in range(3)]; "
              "iqcore.get_quantizer('half', num_bits=8, threshold=1.0); print(json.dumps(builtins.LOADS))")
    assert run(site, script) == 1


def test_a_plugin_installed_by_pip_is_discovered(site):
    source = site / "src"
    source.mkdir()
    (source / "iq_half.py").write_text(textwrap.dedent(WORKING))
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "iq-half"
        version = "0.5"
        [project.entry-points.iqcore]
        half = "iq_half"
        [tool.setuptools]
        py-modules = ["iq_half"]
    """))
    target = site / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    out = run(target)
    assert "half/weights/iq-half" in out["available"] and out["errors"] == {}
