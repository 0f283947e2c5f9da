"""The manifest: YAML loaded with positions and hardened, checked against the JSON schema and
for what a schema cannot say, expanded into jobs (``load``), with every problem worded as a
``FILE:LINE:COL`` diagnostic (``diagnostics``)."""
