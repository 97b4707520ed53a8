"""LightningModules: the training loops of rmrouter (learned reward models, routers, online DPO)."""
