"""Home module of the entry points edgevision registers into timm's registry.

timm files every entry point under the module it names in ``fn.__module__`` (it lists
them with ``timm.list_models(module="timm_models")`` and appends them to that module's
``__all__``), so the module must exist; :func:`edgevision.registry.register_model` fills it.
"""

__all__: list[str] = []

# timm reads a model's default pretrained config from its module's ``default_cfgs``.
default_cfgs: dict[str, dict] = {}
