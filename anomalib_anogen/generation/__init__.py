"""AnoGen stage 1 and 2: learn anomaly embeddings on a frozen latent diffusion model, then generate.

Submodules are imported on demand (``from anomalib_anogen.generation.backbones import load_backbone``)
so that ``anogen --help`` and the plugin's start-up hook never pay for torch or diffusers.
"""
