"""Language models and transformer encoders: find their projections, prune them (magnitude, Wanda, SparseGPT;
uniform, OWL or Mosaic allocation), shrink them physically, and evaluate them on offline text."""
