"""PSPNet50 on Cityscapes, ACoSP-16 (sparsity 0.9375 per layer), with the original's recipe (dl_lib/modeling/acosp/recipes.py;
the published mIoU is in playground/ACoSP/README.md)."""
from dl_lib.modeling.acosp.recipes import acosp_config

config = acosp_config("PSPNet50", "Cityscapes", sparsity=0.9375)
