"""nox sessions. `.ci/run` runs the default TensorFlow only; the sessions here are run by hand."""

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

PLUGINS = ["-e", "plugins/iq-pot", "-e", "plugins/iq-symmetric", "-e", "plugins/iq-uniform"]
# The ONNX exporter plugin (tf2onnx, onnx, onnxruntime): installed where the newest TensorFlow runs; its tests
# skip where it is absent.
ONNX = ["-e", "plugins/iq-onnx"]


@nox.session(python="3.11")
def tests(session):
    """The default test suite on the newest TensorFlow."""
    session.install("-e", ".[cpu,test]", *PLUGINS, *ONNX)
    session.run("pytest", "-q", *session.posargs)


# -- TensorFlow-version matrix (issue 5) -------------------------------------------------------------------
# Each row is (python, tensorflow-cpu, keras requirement, legacy): a pair, not a cross product, with Keras pinned
# per row. ``legacy`` rows run Keras 2 on TF >= 2.16 through tf-keras and TF_USE_LEGACY_KERAS=1.
# nox finds each interpreter as ``pythonX.Y`` on PATH; with pyenv, expose them all first, e.g.
#   PYENV_VERSION=3.13.0:3.12.1:3.11.7:3.10.13 nox -s matrix
MATRIX = [
    ("3.10", "2.21.0", "keras==3.12.1", False),  # the newest Keras for Python 3.10
    ("3.11", "2.15.1", "keras==2.15.0", False),
    ("3.12", "2.16.2", "keras==3.3.3", False),
    ("3.13", "2.21.0", "keras==3.15.1", False),
    ("3.12", "2.21.0", "tf-keras==2.21.0", True),
]
MATRIX_IDS = ["py3.10-tf2.21-keras3.12", "tf2.15-keras2", "tf2.16-keras3", "tf2.21-keras3", "tf2.21-tf_keras"]


@nox.session
@nox.parametrize(("python", "tensorflow", "keras", "legacy"), MATRIX, ids=MATRIX_IDS)
def matrix(session, tensorflow, keras, legacy):
    """The test suite on one (Python, TensorFlow, Keras) row of the supported range."""
    session.install(f"tensorflow-cpu=={tensorflow}", keras, "-e", ".[test,demo]", *PLUGINS)
    env = {"TF_USE_LEGACY_KERAS": "1"} if legacy else {}
    session.run("python", "-c", "import tensorflow as tf; print('tensorflow', tf.__version__, 'tf.keras is Keras',"
                " 3 if hasattr(tf.keras, 'StatelessScope') else 2, tf.keras.__name__)", env=env)
    # One xdist worker: the tests still run one at a time, but a test that aborts the interpreter (TF 2.16.2's
    # TFLite converter does) fails alone instead of ending the session with no summary.
    session.run("pytest", "-q", "-n", "1", "--max-worker-restart", "50", *session.posargs, env=env)


@nox.session(python="3.11")
def lint(session):
    """ruff on every Python file of the repository."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def typecheck(session):
    """mypy on iqcore and the plugins (TensorFlow is untyped: its imports are ignored)."""
    session.install("-e", ".[lint]", *PLUGINS, *ONNX)
    session.run("mypy")  # files and options: [tool.mypy] in pyproject.toml


@nox.session(python="3.11")
def docs(session):
    """Regenerate the transfer-function plots and build the site; any warning fails the build."""
    session.install("mkdocs", "matplotlib", "-e", ".[cpu]", *PLUGINS)
    session.run("python", "docs/scripts/transfer_plots.py", "docs/img")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python="3.11")
def example_plugin(session):
    """Install the third-party example plugin (not editable) next to iqcore; run its tests and the CLI."""
    session.install("-e", ".[cpu,test]", *PLUGINS, "./examples/iq-lut")
    session.run("iqcore", "list")
    session.run("pytest", "-q", "examples/iq-lut/tests", *session.posargs)


# -- Keras 2 (issue 3) ------------------------------------------------------------------------------------------
KERAS2 = [
    ("2.21.0", "tf-keras==2.21.0", True),  # Keras 2 through tf-keras on the newest TensorFlow
    ("2.15.1", "keras==2.15.0", False),  # TF 2.15: tf.keras is Keras 2 itself
]


@nox.session(python="3.11")
@nox.parametrize(("tensorflow", "keras", "legacy"), KERAS2, ids=["tf2.21-tf_keras", "tf2.15-keras2"])
def keras2(session, tensorflow, keras, legacy):
    """The Keras integration tests (tests/test_keras_*.py) under Keras 2."""
    session.install(f"tensorflow-cpu=={tensorflow}", keras, "-e", ".[test]", *PLUGINS)
    env = {"TF_USE_LEGACY_KERAS": "1"} if legacy else {}
    session.run("python", "-c", "import tensorflow as tf, iqcore.keras as k; print('tensorflow', tf.__version__,"
                " 'keras 3' if k.KERAS_3 else 'keras 2')", env=env)
    tests = sorted(str(p) for p in __import__("pathlib").Path("tests").glob("test_keras_*.py"))
    session.run("pytest", "-q", *tests, *session.posargs, env=env)


# -- benchmarks (issue 4) -------------------------------------------------------------------------------------
@nox.session(python="3.11")
def bench(session):
    """The benchmark suite's quick mode (about a minute); `nox -s bench -- --help` for its options.

    mct-quantizers (the seed's library) is installed here only, as the comparison baseline, never as a dependency
    of iqcore; it needs numpy and packaging only, so its torch/tensorflow extras are skipped with --no-deps.
    """
    session.install("-e", ".[cpu]", *PLUGINS, "packaging")
    session.install("--no-deps", "mct-quantizers==1.7.0")
    args = session.posargs or ["--quick"]
    session.run("python", "bench/run.py", *args)


# -- model zoo (issue 10) ----------------------------------------------------------------------------------------
# (tensorflow-cpu, keras, extra requirements). onnx 1.18 and newer need an ml_dtypes newer than TF 2.15 allows.
ZOO = [
    ("2.21.0", "keras==3.15.1", []),  # the dev environment's versions
    ("2.15.1", "keras==2.15.0", ["onnx==1.17.0"]),  # TF 2.15: tf.keras is Keras 2 itself
]
ZOO_IDS = ["tf2.21-keras3", "tf2.15-keras2"]


@nox.session(python="3.11")
@nox.parametrize(("tensorflow", "keras", "extra"), ZOO, ids=ZOO_IDS)
def zoo(session, tensorflow, keras, extra):
    """Keras Applications through iqcore (bench/zoo.py) on one TensorFlow/Keras pair; `nox -s zoo -- --help`.

    Results go to bench/results/zoo_<id>.json unless ``--out`` is given; ``--docs docs/zoo.md`` rewrites the block
    of the session's Keras there (the table for Keras 3, the ``zoo-keras2`` block for Keras 2).
    """
    session.install(f"tensorflow-cpu=={tensorflow}", keras, *extra, "-e", ".[test]", *PLUGINS, *ONNX)
    label = ZOO_IDS[[row[:2] for row in ZOO].index((tensorflow, keras))]
    args = list(session.posargs)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", f"bench/results/zoo_{label}.json"]
    session.run("python", "bench/zoo.py", "--env-label", label, *args)


# -- calibration baseline: MCT on TF 2.15 ------------------------------------------------------------------------
@nox.session(python="3.11")
def calibration_mct(session):
    """MCT's post-training quantization of the digits CNN on TF 2.15 (the comparison row of docs/calibration.md)."""
    session.install("tensorflow-cpu==2.15.1", "model-compression-toolkit==2.6.1", "scikit-learn")
    args = session.posargs or ["--weights", "bench/results/digits_cnn_float.npz",
                               "--out", "bench/results/calibration_mct.json"]
    session.run("python", "bench/calibration_mct.py", *args)


# -- XLA kernel forms per TensorFlow version (issue 12) ---------------------------------------------------------
# (tensorflow-cpu, keras): Keras pinned to a release of the same period; Python 3.11 has wheels for all of them.
XLA_PROOF = [
    ("2.15.1", "keras==2.15.0"),
    ("2.16.2", "keras==3.3.3"),
    ("2.17.1", "keras==3.4.1"),
    ("2.18.1", "keras==3.6.0"),
    ("2.19.1", "keras==3.9.2"),
    ("2.20.0", "keras==3.11.3"),
    ("2.21.0", "keras==3.15.1"),
]


@nox.session(python="3.11")
@nox.parametrize(("tensorflow", "keras"), XLA_PROOF, ids=[f"tf{tf}" for tf, _ in XLA_PROOF])
def xla_proof(session, tensorflow, keras):
    """Which forms of the XLA-context kernel are bit-exact on one TensorFlow version (bench/xla_proof.py);
    the verdicts fill ``XLA_PROVEN`` in iqcore/_kernels.py and docs/versions.md."""
    session.install(f"tensorflow-cpu=={tensorflow}", keras, "-e", ".[test]", *PLUGINS)
    session.run("python", "bench/xla_proof.py", *session.posargs)


@nox.session(python="3.11")
def mct_fixtures(session):
    """Regenerate tests/fixtures/*.keras|h5|npz: small models written with the seed's library (mct-quantizers
    1.7.0 and MCT 2.6.1 on TensorFlow 2.15, Keras 2) and the seed's outputs on a fixed input, for iqcore's loader
    tests. The seed's packages are installed here only, never as dependencies of iqcore."""
    session.install("tensorflow-cpu==2.15.1", "model-compression-toolkit==2.6.1", "mct-quantizers==1.7.0")
    session.run("python", "tests/fixtures/make_mct_models.py", *(session.posargs or ["tests/fixtures"]))
