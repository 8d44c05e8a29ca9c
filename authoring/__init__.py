"""defc's authoring tools: lint, new-op scaffolding, dataset validation and coverage (they use the compiler)."""
