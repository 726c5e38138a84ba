"""AnoGen stage 2: put generated defects into normal images at sampled boxes and write an anomaly bank.

``command`` holds ``anogen generate``; ``inputs`` checks what it is given; ``boxes``, ``foreground`` and
``placement`` decide where a defect goes; ``work`` and ``run`` are the work list and the loop; ``backends`` make
the pixels (``diffusion``: the paper's blended latent diffusion, ``paste``: real support anomalies);
``bank_writer`` writes the bank and ``show`` draws its contact sheet. Submodules are imported on demand.
"""
