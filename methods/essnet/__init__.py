"""ESSNet (embedding-based scalable segmentation): linear vs embedding heads, the nearest-class
search interface (faiss / torch backends), k-nearest negative sampling, tensor-memory accounting.
Trials in :mod:`methods.essnet.trials`."""
