"""SparseRefine (Liu et al., ECCV 2024): dense low-resolution predictions refined sparsely at high resolution."""

from methods.sparserefine import table1 as table1  # registers sparserefine.table1_cost
