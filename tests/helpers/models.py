"""Small models for tests: anomalib-style constructors on small images and short schedules."""

from anomalib_anogen.models import Destseg, DestsegWeak

RANDOM = "random"


def small_destseg(model_class: type = Destseg, size: int = 64, **kwargs: object) -> Destseg | DestsegWeak:
    """A model on small images with a short schedule and a random teacher.

    Not below 64 px: at 32 px ResNet's layer 4 is 1x1, BatchNorm statistics over a batch of 2 such maps are
    degenerate, and the student's eval-mode features overflow after a couple of steps at lr 0.4.
    """
    arguments = {"pretrained_weights": RANDOM, "steps": 4, "de_st_steps": 2, "T": 10, "visualizer": False}
    arguments.update(kwargs)
    return model_class(pre_processor=model_class.configure_pre_processor((size, size)), **arguments)
