"""defc: a declarative compiler for FlashInfer-Bench kernel Definitions."""
__version__ = "0.1.0"
