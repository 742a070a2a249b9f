"""``harness.backbone`` is ``clipcore.backbone``: the backbone moved to the layer beneath the harness and
the methods, and this name stays for code written against it (``harness.backbone.register_backbone``).

The module object itself is the same one, not a copy of its names, so that registering a backbone or
replacing a function here is seen by every caller.
"""

import sys

from clipcore import backbone

sys.modules[__name__] = backbone
