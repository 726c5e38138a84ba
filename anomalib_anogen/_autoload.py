"""Start-up hook that lets anomalib's own CLI resolve this plugin's models by short name.

jsonargparse resolves ``--model DraemWeak`` only for ``AnomalibModule`` subclasses that are
already imported when anomalib's CLI parses its arguments, and anomalib has no plugin entry
point. The installed ``anomalib_anogen_autoload.pth`` imports this module at interpreter
start; it adds one meta-path finder and nothing else, so processes that never import
anomalib pay only for this small file. The finder fires once, when the ``anomalib.cli`` package
is imported (by the ``anomalib`` console script, ``python -m anomalib.cli.cli`` or
``from anomalib.cli import AnomalibCLI``), and imports ``anomalib_anogen.models`` right after
that package has executed. In the ``anomalib`` command it also makes the plugin's input errors
print as one ``error:`` line (``anomalib_anogen.arguments.install_cli_error_hook``).
"""

import sys

TRIGGER_MODULE = "anomalib.cli"
PLUGIN_MODULE = "anomalib_anogen.models"
ERRORS_MODULE = "anomalib_anogen.arguments"


class _ImportPluginAfterLoader:
    """Loader wrapper: run the real loader, then import the plugin's models."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        import importlib
        import warnings

        try:
            importlib.import_module(PLUGIN_MODULE)
            importlib.import_module(ERRORS_MODULE).install_cli_error_hook()
        except Exception as error:
            warnings.warn(
                f"anomalib-anogen could not register its models with anomalib's CLI ({error!r}); "
                "reinstall it with `pip install anomalib-anogen` or use the full class path.",
                stacklevel=2,
            )


class AnomalibCliFinder:
    """Meta-path finder that wraps the loader of ``anomalib.cli``; inert for every other module."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != TRIGGER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ImportPluginAfterLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Add the finder once, also when this module is imported again."""
    if not any(type(finder).__name__ == AnomalibCliFinder.__name__ for finder in sys.meta_path):
        sys.meta_path.insert(0, AnomalibCliFinder())


install()
