"""HFGD (High-level Feature Guided Decoder): ResNet backbones, CAE and alternative OS 32 encoders,
SemanticFPN / U-SFPN upsampling heads, HFGM (shared class kernels, stop gradients, axial attention),
MAC counting and CPU training. Trials in :mod:`methods.hfgd.trials`."""
