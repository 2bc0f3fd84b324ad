"""Teachers: frozen denoisers behind one interface (analytic mixtures now, EDM networks later)."""
