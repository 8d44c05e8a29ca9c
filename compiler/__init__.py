"""defc's compiler: load → check → evaluate → render → write (one module per stage)."""
