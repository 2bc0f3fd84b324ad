"""Test-only helpers shared across the suite (never imported by simcli).

- edm_pickle_writer: writes networks in the official NVIDIA EDM snapshot pickle format, faithful and broken;
- tiny_edm: a tiny random-weight EDM teacher pickle for end-to-end tests;
- eval_tiny_extractor: a tiny deterministic feature extractor for FID/IS tests;
- gaussian_toy: closed forms of the Gaussian toy behind the SIM gradient-identity tests.
"""
