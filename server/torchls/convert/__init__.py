"""Convert checkpoints (safetensors, extract, cast), verified, beside the original: the engine
(run.py) shared by `torchls convert` (command.py) and the language server's commands."""
