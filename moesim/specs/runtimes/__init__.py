"""Built-in runtime profiles (YAML): framework overheads and memory reserve, ``--runtime vllm``."""
