"""What a model costs: preparing profile jobs, caching their results, rendering them."""
