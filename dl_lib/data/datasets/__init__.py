"""Dataset loaders; importing this package registers the built-in dataset names."""
from dl_lib.data.datasets import builtin  # noqa: F401  (registers built-in names)
from dl_lib.data.datasets.cityscapes import load_cityscapes_semantic
from dl_lib.data.datasets.common import load_sem_seg
from dl_lib.data.datasets.custom import register_sem_seg


def ensure_synthetic_cityscapes(*args, **kwargs):
    """See :func:`dl_lib.data.datasets.synthetic.ensure_synthetic_cityscapes`."""
    from dl_lib.data.datasets.synthetic import ensure_synthetic_cityscapes as f

    return f(*args, **kwargs)


def generate_synthetic_cityscapes(*args, **kwargs):
    """See :func:`dl_lib.data.datasets.synthetic.generate_synthetic_cityscapes`."""
    from dl_lib.data.datasets.synthetic import generate_synthetic_cityscapes as f

    return f(*args, **kwargs)

__all__ = ["register_sem_seg", "load_sem_seg", "load_cityscapes_semantic",
           "ensure_synthetic_cityscapes", "generate_synthetic_cityscapes"]
