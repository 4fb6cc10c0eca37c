"""The `caliban` and `expansion` command lines. Heavy packages are imported lazily."""
