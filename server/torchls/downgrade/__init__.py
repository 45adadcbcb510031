"""Downgrade checkpoint: re-save a checkpoint (or a Hugging Face model folder) in torch's legacy
format, which torch < 1.6 loads, and prove the copy equal before it is put in place."""
