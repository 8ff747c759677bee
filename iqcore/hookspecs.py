"""The plugin hooks. A plugin is a module named by an entry point in the ``iqcore`` group::

    [project.entry-points.iqcore]
    lut = "iq_lut"

that implements hooks with ``@iqcore.hookimpl``. Each hook is documented in docs/plugins.md.
"""

import pluggy

hookspec = pluggy.HookspecMarker("iqcore")
hookimpl = pluggy.HookimplMarker("iqcore")


@hookspec
def register_quantizers(register):
    """Register quantizer classes by calling ``register(cls)`` once per class.

    ``cls`` subclasses :class:`iqcore.InferableQuantizer` and sets ``method`` (a lower-case name such as
    ``"symmetric"``) and ``target`` (``"weights"`` or ``"activation"``); ``iqcore.get_quantizer(method,
    target)`` then builds it. Registering a (method, target) that another plugin also registers makes that
    pair unusable until one of them is blocked (``IQCORE_BLOCK_PLUGINS``).
    """
