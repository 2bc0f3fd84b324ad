"""Networks: EDM preconditioning and the denoiser architectures simcli trains."""
