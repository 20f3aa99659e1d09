"""Model runtime over Hugging Face transformers, the in-process decoder, and the bundled draft/target pair."""
