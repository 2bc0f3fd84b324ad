"""Unit tests: one module or function at a time, fast, against closed forms and hand computations."""
