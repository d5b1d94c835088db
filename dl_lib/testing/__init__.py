"""Test utilities shipped with the library (need the ``test`` extra: ``pip install dl_lib[test]``).

``op_fuzz``: the property-based harness every compiled op is fuzzed with (registry of op specs,
generic checks against the op's pure-PyTorch reference, bad-argument cases).
"""
