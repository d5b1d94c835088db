"""PSPNet50 on ADE20K, ACoSP-8 (sparsity 0.875 per layer), with the original's recipe (dl_lib/modeling/acosp/recipes.py;
the published mIoU is in playground/ACoSP/README.md)."""
from dl_lib.modeling.acosp.recipes import acosp_config

config = acosp_config("PSPNet50", "ADE20K", sparsity=0.875)
