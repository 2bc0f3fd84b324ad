"""Networks, the bottom of the engine: the Denoiser interface and G(z), EDM architectures and preconditioners, MLP denoisers, the EDM noise schedule."""
