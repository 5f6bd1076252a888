"""Built-in model specs (YAML), loaded by name: ``--model deepseek-v3``."""
