"""The methods of the paper's Table 2 that `momil benchmark` runs, by name."""

# name -> (label in the table, train settings, cv settings)
METHODS: dict[str, tuple[str, dict, dict]] = {
    "instance-count": ("Instance count -> LR", {"model": "instance-count"}, {"configuration": "mtl-primary"}),
    "mean-lr": ("FM -> Mean -> LR", {"model": "mean-lr"}, {"configuration": "mtl-primary"}),
    "mean-mlp": ("FM -> Mean -> MLP", {"model": "mean-mlp"}, {"configuration": "mtl-all"}),
    "multilabel-mil": ("FM -> Multi-label-MIL (|T| = all)", {"model": "multilabel-mil"}, {"configuration": "mtl-all"}),
    "mil-amtl": ("FM -> MIL + AMTL (|T| = all)", {"balancing": "amtl"}, {"configuration": "mtl-all"}),
    "momil-stl": ("MoMIL STL (|T| = 1)", {}, {"configuration": "stl"}),
    "momil-primary": ("MoMIL MTL (primary)", {}, {"configuration": "mtl-primary"}),
    "momil-all": ("MoMIL (|T| = all)", {}, {"configuration": "mtl-all"}),
    "momil-as": ("MoMIL + AS", {}, {"configuration": "mtl-all", "select": True}),
    "momil-as-li": ("MoMIL + AS + LI", {}, {"configuration": "mtl-all", "select": True, "impute": True}),
}
