"""Run specs (pydantic v2): what a run is, validated once at the boundary."""
