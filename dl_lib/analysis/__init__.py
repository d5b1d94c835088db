"""Model cost analysis: parameters, FLOPs under named conventions, per-image cost aggregation.

    from dl_lib.analysis import count_parameters, flop_count, flop_table, summarize_costs
    r = flop_count(model, input_size=(1024, 2048), convention="hrnet")
    print(r, flop_table(r, max_depth=2))
"""
from .costs import cost_items, summarize_costs
from .flops import CONVENTIONS, FlopResult, flop_count, flop_table
from .params import ParamCount, count_parameters, parameter_table

__all__ = [
    "CONVENTIONS", "FlopResult", "ParamCount", "cost_items", "count_parameters", "flop_count",
    "flop_table", "parameter_table", "summarize_costs",
]
