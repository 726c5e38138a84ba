"""AnoGen stage 1: learn one text embedding per defect type from a few real anomalies (masked textual inversion).

``command`` holds ``anogen learn`` and ``anogen import-embedding``; ``textual_inversion`` the training itself;
``embeddings`` the file format that stage 2 reads. Submodules are imported on demand (torch and diffusers are
loaded only when a command runs).
"""
