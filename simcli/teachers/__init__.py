"""Teachers: the Teacher record and the one table of teacher kinds (analytic mixtures, EDM checkpoints), the safe EDM pickle loader, the catalog and download cache."""
