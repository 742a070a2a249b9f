"""What the methods are built from, kept apart from them so that ``ls methods/`` is the list of methods.

``base`` (the contract every method implements, ``CLIPMethod``, and the option types its constructor
uses), ``registry`` (``register_method``, ``build_method``, ``method_info``, discovery) and the pieces
several methods share: ``prompt_encoder`` (the exact fast CoOp/CoCoOp text path), ``prompt_text``
(the prompt text around a learnable span), ``deep_prompts`` (hooks that put deep prompts into
open_clip's blocks), ``teachers`` (frozen zero-shot teachers) and ``whole_model_checkpoint`` (the
authors' whole-model checkpoint layout).

A sub-package, not a module, because discovery (``registry.discover``) imports every module of
``methods/`` as a method and skips packages: nothing here registers a method, and nothing here needs
listing. Users reach the API through ``methods`` itself (``methods.CLIPMethod``,
``methods.register_method``, ...).
"""
