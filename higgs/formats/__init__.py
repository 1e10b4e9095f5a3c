"""Built-in wire formats (OpenAI and Anthropic), registered through ``higgs_formats`` like any plugin."""
