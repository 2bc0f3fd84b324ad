"""Compare finished or running distillation runs: read their run directories, summarise, plot."""
