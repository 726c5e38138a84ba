"""anomalib-anogen: AnoGen few-shot anomaly generation and weakly-supervised detectors for anomalib.

This top-level module stays import-free on purpose: the plugin's start-up hook imports it in
every Python process (see ``_autoload``), so anything heavy here would slow them all down.
Import models from ``anomalib_anogen.models``.
"""

__version__ = "0.1.0"
