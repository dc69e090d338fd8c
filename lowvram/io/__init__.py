"""Writing results: unique output names, atomic writes, the JSON sidecar."""
