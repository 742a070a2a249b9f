"""The miniature world: generated captioned scenes and a tiny CLIP contrastively pre-trained on them.

What the demo profile runs on when no data root is given. It plugs into the harness through
``miniworld.plugin`` (the backbone ``tiny-pretrained`` and the demo datasets ``miniworld_*``); the
harness never imports it. Command line: ``python -m miniworld --help``.
"""
