"""Model cost analysis: parameters, FLOPs under named conventions, executed cost per image.

    from dl_lib.analysis import count_parameters, flop_count, flop_table, summarize_costs
    r = flop_count(model, input_size=(1024, 2048), convention="hrnet")
    print(r, flop_table(r, max_depth=2))

    with CostTracker(model, ["gmac"], num_images=len(batch)) as t:   # what the evaluator does
        model(batch)
    t.per_image()   # [{"gmac": GMACs of image 0}, ...]
"""
from .cost_tracker import CostTracker, cost_scope, current_tracker, report_cost
from .costs import cost_items, summarize_costs
from .flops import CONVENTIONS, FlopResult, flop_count, flop_table
from .masked_cost import counted_as_masked_conv, masked_conv_macs
from .params import ParamCount, count_parameters, parameter_table

__all__ = [
    "CONVENTIONS", "CostTracker", "FlopResult", "ParamCount", "cost_items", "cost_scope",
    "count_parameters", "counted_as_masked_conv", "current_tracker", "flop_count", "flop_table",
    "masked_conv_macs", "parameter_table", "report_cost", "summarize_costs",
]
