"""Training stage: a plain local loop and the distributed Ray Train runner share the export format."""
