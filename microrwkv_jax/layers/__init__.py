"""Building blocks every model family uses. Layers know no family: families compose them."""
