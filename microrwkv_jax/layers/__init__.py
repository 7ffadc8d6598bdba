"""Building blocks shared by the causal model and the published-architecture model."""
