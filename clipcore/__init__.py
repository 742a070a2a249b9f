"""The layer beneath the harness and the methods: what both need and neither owns.

``backbone`` (the frozen CLIP: the backbone table, loading, precision, tokeniser, the two encoders),
``checkpoint_file`` (where a method's checkpoint sits in a run folder, and reading one, also the
authors'), ``atomic`` (writes that leave the old file or the new one, never half), ``plugins``
(entry-point plugins that add backbones, datasets or methods) and ``paths`` (the user's cache folder).

Imports run one way: ``harness`` -> ``methods`` -> ``clipcore`` (``bounds``, the declarations of
allowed values, stands alone). Nothing here imports the harness or the methods
(``tests/test_imports.py``).
"""
