"""What both of AnoGen's stages share: errors, image and file I/O, number checks, devices and backbones.

Nothing here imports the rest of the package (the layering is checked, see ``.importlinter``). Submodules are
imported on demand, so that ``anogen --help`` and the plugin's start-up hook never pay for torch or diffusers.
"""
