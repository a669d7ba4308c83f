"""QGN: Quadtree Generating Networks (Chitta, Alvarez, Hebert, WACV 2020).

- ``tpyramid``: quadtrees / T-pyramids of label maps (merge operator, leaf levels, sparsity stats);
- ``encoder``: ResNet encoders and the dilated-ResNet baseline;
- ``sparse_ops``: 2x2 nearest upsampling of active sites, skip gathers, sparse residual units
  (on top of ``methods.sparse``);
- ``model``: the QGN (sparse decoder, per-level predictions, leaf accumulation);
- ``schemes``: propagation schemes All / GTC / PC, level-loss weights, the leaf inference rule;
- ``train``: level losses, training and evaluation;
- ``cost``: activation memory and MAC accounting;
- ``trials``: ``qgn.sparsity``, ``qgn.train_eval``, ``qgn.cost``.
"""
