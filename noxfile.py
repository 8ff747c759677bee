"""nox sessions. `.ci/run` runs the default TensorFlow only; the sessions here are run by hand."""

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

PLUGINS = ["-e", "plugins/iq-pot", "-e", "plugins/iq-symmetric", "-e", "plugins/iq-uniform"]


@nox.session(python="3.11")
def tests(session):
    """The default test suite on the newest TensorFlow."""
    session.install("-e", ".[cpu,test]", *PLUGINS)
    session.run("pytest", "-q", *session.posargs)
