"""SparseRefine (Liu et al., ECCV 2024): dense low-resolution predictions refined sparsely at high resolution."""
