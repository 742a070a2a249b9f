"""Extension points: packages that add backbones, datasets or methods without editing the harness.

A plugin is a module named under the ``prompt_harness.plugins`` entry-point group of an installed
package; importing it registers what it provides (``clipcore.backbone.register_backbone``,
``harness.data.register_dataset``, ``methods.register_method``). This project's own miniature world
is one (``pyproject.toml``: ``miniworld = "miniworld.plugin"``), so the harness never imports it:
the registries load the plugins the first time a name is not found among the built-in ones.

    [project.entry-points."prompt_harness.plugins"]
    my_backbones = "my_package.harness_plugin"
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

log = logging.getLogger(__name__)

GROUP = "prompt_harness.plugins"
_loaded = False


def load_plugins() -> None:
    """Import every registered plugin module once (later calls do nothing)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=GROUP):
        try:
            importlib.import_module(entry.value)
        except Exception as exc:  # a broken plugin must not take the harness down
            log.warning("plugin %s (%s) failed to load: %s: %s", entry.name, entry.value, type(exc).__name__, exc)
