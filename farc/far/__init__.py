"""DeiT -> FAR: the training side of the pipeline (teacher training loop, block-wise
distillation, Hoyer-Square structured pruning). Import the submodules directly
(`farc.far.distill`, `farc.far.prune`); this package stays import-light."""
