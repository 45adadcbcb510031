"""Reading the user's Python without running it: model classes, constructions, input shapes."""
