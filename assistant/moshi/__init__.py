"""The Moshi speech LM on transformers' model definitions: checkpoint loading, the streaming step, sampling."""
