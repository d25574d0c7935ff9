"""ExtractionService (extract + consolidate through LiteLLM) and the JetStream job worker."""
