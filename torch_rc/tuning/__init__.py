"""Schedule tuning (the search engine lands here); for now the correctness check tuned kernels pass."""
