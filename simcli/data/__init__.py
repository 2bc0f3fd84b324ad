"""Small built-in data sets (scikit-learn's handwritten digits) with fixed, version-stable splits."""
