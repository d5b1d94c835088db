"""PSPNet50 on VOC2012, ACoSP-4 (sparsity 0.75 per layer), with the original's recipe (dl_lib/modeling/acosp/recipes.py;
the published mIoU is in playground/ACoSP/README.md)."""
from dl_lib.modeling.acosp.recipes import acosp_config

config = acosp_config("PSPNet50", "VOC2012", sparsity=0.75)
